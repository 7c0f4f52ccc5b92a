package agentcfg

import (
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// EditFailoverServers returns data with failover_servers set to list (see
// ParseFailoverServers for the form; nil or empty: ""). Like Edit it is a
// text edit that keeps every other byte: the value is replaced in place
// (keeping its quoting) or the key appended. When the file already lists
// exactly these servers (an absent or null key counts as none) the result
// is data itself. The result is parsed again and must hold list and every
// other key, owned or not, unchanged; otherwise the error wraps
// ErrSelfCheck. The file must be valid as a whole.
func EditFailoverServers(data []byte, list []string) ([]byte, error) {
	d, err := load(data)
	if err != nil {
		return nil, err
	}
	out, _, err := d.editServers(list)
	return out, err
}

// canonServers validates list the way the file is read (and drops
// duplicates).
func canonServers(list []string) ([]string, error) {
	v := FormatFailoverServers(list)
	got, err := ParseFailoverServers(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadUpdate, err)
	}
	return got, nil
}

func (d *doc) editServers(list []string) ([]byte, Address, error) {
	list, err := canonServers(list)
	if err != nil {
		return nil, Address{}, err
	}
	before, err := d.address()
	if err != nil {
		return nil, Address{}, err
	}
	if slices.Equal(before.FailoverServers, list) {
		return d.data, before, nil
	}
	val := FormatFailoverServers(list)
	out, changed, err := d.set([]setKey{{KeyFailoverServers, val, true, func(s string) bool {
		got, err := ParseFailoverServers(s)
		return err == nil && slices.Equal(got, list)
	}}})
	if err != nil {
		return nil, Address{}, err
	}
	if !changed {
		return d.data, before, nil
	}
	after, err := d.checkServers(out, before, list)
	if err != nil {
		return nil, Address{}, err
	}
	return out, after, nil
}

// checkServers re-parses out: it must list exactly list, with every other
// key (the token keys, use_ssl and the keys agentcfg does not own)
// unchanged.
func (d *doc) checkServers(out []byte, before Address, list []string) (Address, error) {
	d2, err := d.reparse(out)
	if err != nil {
		return Address{}, fmt.Errorf("%w: %v", ErrSelfCheck, err)
	}
	got, err := d2.address()
	if err != nil {
		return Address{}, fmt.Errorf("%w: %v", ErrSelfCheck, err)
	}
	if !slices.Equal(got.FailoverServers, list) {
		return Address{}, fmt.Errorf("%w: failover_servers re-parsed as %q", ErrSelfCheck, got.FailoverServers)
	}
	g := got
	g.FailoverServers = before.FailoverServers
	if !g.Equal(before) {
		return Address{}, fmt.Errorf("%w: the token keys changed: %+v", ErrSelfCheck, got)
	}
	for _, k := range []string{KeyStompInterface, KeyStompPort, KeyUseSSL, KeyFailoverID, KeyFailoverEpoch, KeyFailoverSig} {
		o, _, _, _ := d.scalar(k)
		n, _, _, _ := d2.scalar(k)
		if o != n {
			return Address{}, fmt.Errorf("%w: %s changed from %q to %q", ErrSelfCheck, k, o, n)
		}
	}
	if a, b := otherKeys(d), otherKeys(d2); a != b {
		return Address{}, fmt.Errorf("%w: other keys changed", ErrSelfCheck)
	}
	return got, nil
}

// SetFailoverServers sets failover_servers in the address.yaml at path to
// list: what an agent does with the servers its primary's pings name. It
// has CompareAndSwap's guarantees: the exclusive flock on LockPath(target)
// from the read to the rename, an atomic durable write keeping the mode
// (and owner), symbolic links followed only beneath the directory, no FIFO
// blocking, a bounded lock wait, and a file that cannot be parsed or edited
// left byte-identical (Invalid). It never touches stomp_interface,
// stomp_port, use_ssl, failover_id, failover_epoch or failover_sig, so it
// cannot move the agent or change its token; a concurrent token rewrite is
// never lost. A file that already lists exactly these servers is
// Unchanged. An invalid list is Failed (ErrBadUpdate).
func SetFailoverServers(path string, list []string) Result {
	return SetFailoverServersWith(path, list, BatchOptions{})
}

// SetFailoverServersWith is SetFailoverServers with MaxFileSize,
// LockTimeout and Flusher from opt (the other options are ignored).
func SetFailoverServersWith(path string, list []string, opt BatchOptions) Result {
	if _, err := canonServers(list); err != nil {
		return Result{Path: path, Outcome: Failed, Err: err}
	}
	return rewriteLocked(path, opt, func(r *Result, t *target) ([]byte, *unix.Stat_t) {
		d, data, st := readLocked(r, t, opt)
		if d == nil {
			return nil, nil
		}
		out, after, err := d.editServers(list)
		return edited(r, data, st, out, after, err)
	})
}
