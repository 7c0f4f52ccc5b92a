package redact

import (
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for _, raw := range []string{"stomp://admin:hunter2@mq:61613", "stomp://u:hunter2%zz@h:1", "x://a:hunter2@b@c"} {
		if got := URL(raw); strings.Contains(got, "hunter2") {
			t.Errorf("%s → %s", raw, got)
		}
	}
	if got := URL("stomp://mq:61613"); got != "stomp://mq:61613" {
		t.Errorf("a URL without credentials changed: %s", got)
	}
}
