package broker

import (
	"fmt"

	"github.com/sirupsen/logrus"
)

// stompLogger adapts logrus to go-stomp's Logger. go-stomp logs every routine
// disconnect at error level ("connection closed", "read failed"), so its
// messages go to debug; the broker logs the events that matter itself.
type stompLogger struct{ l logrus.FieldLogger }

func (s stompLogger) Debugf(f string, v ...interface{}) {
	s.l.Debug("go-stomp: " + fmt.Sprintf(f, v...))
}
func (s stompLogger) Infof(f string, v ...interface{}) {
	s.l.Debug("go-stomp: " + fmt.Sprintf(f, v...))
}
func (s stompLogger) Warningf(f string, v ...interface{}) {
	s.l.Debug("go-stomp: " + fmt.Sprintf(f, v...))
}
func (s stompLogger) Errorf(f string, v ...interface{}) {
	s.l.Debug("go-stomp: " + fmt.Sprintf(f, v...))
}
func (s stompLogger) Debug(m string)   { s.l.Debug("go-stomp: " + m) }
func (s stompLogger) Info(m string)    { s.l.Debug("go-stomp: " + m) }
func (s stompLogger) Warning(m string) { s.l.Debug("go-stomp: " + m) }
func (s stompLogger) Error(m string)   { s.l.Debug("go-stomp: " + m) }
