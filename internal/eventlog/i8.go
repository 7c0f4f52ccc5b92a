package eventlog

import (
	"fmt"
	"sort"
)

// Acting is one server's stretch of acting as primary at one epoch: from
// its first message sent (heartbeat, command or rebind) to its last, on
// the host's monotonic clock. Each stamp is taken once the send returned,
// so a stretch may start up to one send's latency late.
type Acting struct {
	Node        string
	FailoverID  string
	Epoch       uint64
	First, Last int64 // HostMonoNS
	Sends       int
}

// ActingStretches reads one server's records (event_log_messages on) into
// its stretches of acting, in order. A stretch ends at the last send before
// a record that says the server stopped (fenced, deposed, a role change),
// or at its epoch changing.
func ActingStretches(events []Event) []Acting {
	var out []Acting
	var cur *Acting
	flush := func() {
		if cur != nil {
			out = append(out, *cur)
			cur = nil
		}
	}
	for _, e := range events {
		switch e.Kind {
		case KindHeartbeat, KindCommand, KindRebind:
			if e.HostMonoNS == 0 || e.Role != "primary" {
				continue
			}
			if cur != nil && (cur.Epoch != e.Epoch || cur.FailoverID != e.FailoverID) {
				flush()
			}
			if cur == nil {
				cur = &Acting{Node: e.Node, FailoverID: e.FailoverID, Epoch: e.Epoch, First: e.HostMonoNS}
			}
			cur.Last = e.HostMonoNS
			cur.Sends++
		case KindFenced, KindDeposed, KindRole:
			flush()
		}
	}
	flush()
	return out
}

// CheckI8 reports every instant two servers acted as primary at once: two
// stretches of different servers (by failover id) that overlap on the
// host's monotonic clock. servers holds each server's records.
func CheckI8(servers [][]Event) []string {
	var all []Acting
	for _, evs := range servers {
		all = append(all, ActingStretches(evs)...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].First < all[j].First })
	var errs []string
	for i := range all {
		for j := i + 1; j < len(all) && all[j].First <= all[i].Last; j++ {
			a, b := all[i], all[j]
			if a.FailoverID == b.FailoverID {
				continue
			}
			errs = append(errs, fmt.Sprintf("I8 violated: %s (epoch %d) and %s (epoch %d) both acted as primary for %.1f ms (%s sent until %d, %s from %d, host monotonic ns)",
				a.Node, a.Epoch, b.Node, b.Epoch, float64(min(a.Last, b.Last)-b.First)/1e6, a.Node, a.Last, b.Node, b.First))
		}
	}
	return errs
}
