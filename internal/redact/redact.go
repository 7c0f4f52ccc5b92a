// Package redact keeps credentials out of messages and logs.
package redact

import (
	"net/url"
	"strings"
)

// URL is raw with any password in it replaced by xxxxx; an unparseable URL
// has whatever stands between "://" and its last "@" masked.
func URL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		return u.Redacted()
	}
	if i := strings.Index(raw, "://"); i >= 0 {
		if j := strings.LastIndex(raw, "@"); j > i+3 {
			return raw[:i+3] + "xxxxx" + raw[j:]
		}
	}
	return raw
}
