package testbrokers

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/tandem-ha/tandem/internal/testports"
)

const activemqJar = "/usr/share/activemq/bin/activemq.jar"

// activemqXML: no persistence, JMX or advisories; one STOMP connector on
// loopback whose heart-beat grace is 1.5 (with the default 1.0 ActiveMQ
// dropped idle go-stomp clients).
const activemqXML = `<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="tandem-test"
          persistent="false" useJmx="false" advisorySupport="false" dataDirectory="${activemq.data}">
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:${stomp.port}?transport.hbGracePeriodMultiplier=1.5"/>
    </transportConnectors>
  </broker>
</beans>
`

// Debian's ActiveMQ logs through log4j 1.2, which reads this from the conf
// directory (on the classpath).
const log4jProps = `log4j.rootLogger=WARN, stdout
log4j.logger.org.apache.activemq.broker.BrokerService=INFO
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d %-5p %c{1} - %m%n
`

// newActiveMQ prepares a private ActiveMQ instance, run as the JVM itself
// (not Debian's wrapper script, which overrides the options and base dir),
// so the launched pid is the broker's.
func newActiveMQ(t testing.TB) *Broker {
	t.Helper()
	require(t, "ActiveMQ", activemqJar, "apt-get install activemq")
	port := testports.Port(t)
	dir := instanceDir(t, map[string]string{
		"conf/activemq.xml":     activemqXML,
		"conf/log4j.properties": log4jProps,
	}, "data", "tmp")
	conf := filepath.Join(dir, "conf")
	b := &Broker{kind: ActiveMQ, addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir}
	b.launch = func() *exec.Cmd {
		cmd := exec.Command("java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
			// Java 17 flags copied from Debian's wrapper script.
			"--add-reads=java.xml=java.logging",
			"--add-opens", "java.base/java.security=ALL-UNNAMED",
			"--add-opens", "java.base/java.net=ALL-UNNAMED",
			"--add-opens", "java.base/java.lang=ALL-UNNAMED",
			"--add-opens", "java.base/java.util=ALL-UNNAMED",
			"--add-opens", "java.naming/javax.naming.spi=ALL-UNNAMED",
			"--add-opens", "java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED",
			"--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
			"--add-opens", "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
			"--add-exports=java.base/sun.net.www.protocol.http=ALL-UNNAMED",
			"--add-exports=java.base/sun.net.www.protocol.https=ALL-UNNAMED",
			"--add-exports=java.base/sun.net.www.protocol.jar=ALL-UNNAMED",
			"--add-exports=jdk.xml.dom/org.w3c.dom.html=ALL-UNNAMED",
			"--add-exports=jdk.naming.rmi/com.sun.jndi.url.rmi=ALL-UNNAMED",
			"-Dactivemq.home=/usr/share/activemq",
			"-Dactivemq.base="+dir,
			"-Dactivemq.conf="+conf,
			"-Dactivemq.data="+filepath.Join(dir, "data"),
			"-Dactivemq.classpath="+conf,
			"-Djava.io.tmpdir="+filepath.Join(dir, "tmp"),
			"-Dstomp.port="+strconv.Itoa(port),
			"-jar", activemqJar, "start", "xbean:file:"+filepath.Join(conf, "activemq.xml"))
		cmd.Dir = dir
		return cmd
	}
	return b
}
