package node

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/tandem-ha/tandem/config"
)

// preflight checks what a start needs before anything is created, so that a
// misconfiguration is one line naming the key and the file (exit 2) and
// leaves nothing behind: data_dir is a directory (or can be made), its
// primary_location does not name this very server, the event log's
// directory exists, and the broker's and admin's addresses are free.
func (n *Node) preflight() error {
	c := n.cfg
	where := c.Path
	if where == "" {
		where = "tandem.yaml"
	}
	if fi, err := os.Stat(c.DataDir); err == nil && !fi.IsDir() {
		return badInput(fmt.Errorf("%s: data_dir %s is a file: expected a directory", where, c.DataDir))
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return badInput(fmt.Errorf("%s: data_dir %s: %v", where, c.DataDir, err))
	}
	if loc, isBackup, err := config.ReadPrimaryLocation(c.DataDir); err == nil && isBackup && sameAddress(loc, c.Advertise) {
		return badInput(fmt.Errorf("%s: names this server's own advertise address (%s): a server cannot be its own backup; fix it, or remove it to make this server the primary",
			filepath.Join(c.DataDir, config.PrimaryLocationFile), c.Advertise))
	}
	if c.EventLog != "" {
		if fi, err := os.Stat(filepath.Dir(c.EventLog)); err != nil || !fi.IsDir() {
			return badInput(fmt.Errorf("%s: event_log %s: its directory %s does not exist", where, c.EventLog, filepath.Dir(c.EventLog)))
		}
	}
	if n.realListeners {
		for _, l := range []struct{ key, addr string }{{"listen", c.Listen}, {"admin", c.Admin}} {
			if err := probeListen(l.addr); err != nil {
				return badInput(fmt.Errorf("%s: %s %s: %v (is another tandem server or broker running?)", where, l.key, l.addr, unwrapOp(err)))
			}
		}
	}
	return nil
}

// probeListen binds addr and lets it go (port 0 needs no check).
func probeListen(addr string) error {
	if _, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ln.Close()
}

// unwrapOp drops net.OpError's repetition of the address.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// sameAddress reports whether a primary_location and an advertise address
// name the same host:port (each with the default port when it has none).
func sameAddress(loc, advertise string) bool {
	norm := func(s string) string {
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			host, port = s, strconv.Itoa(config.DefaultPort)
		}
		return net.JoinHostPort(host, port)
	}
	return loc != "" && advertise != "" && norm(loc) == norm(advertise)
}

// configWarnings are the standing warnings of a configuration that passed
// validation but will not do what its owner expects.
func (n *Node) configWarnings(st Status) []string {
	var w []string
	c := n.cfg
	if _, _, err := net.SplitHostPort(c.Advertise); err != nil {
		if _, lport, err := net.SplitHostPort(c.Listen); err == nil && lport != "0" && lport != strconv.Itoa(config.DefaultPort) {
			w = append(w, fmt.Sprintf("advertise %q has no port, so agents are told %d, but listen is on port %s: set advertise: %s:%s", c.Advertise, config.DefaultPort, lport, c.Advertise, lport))
		}
	}
	if len(c.Agents) > 0 && st.Agents.Managed == 0 && st.Role != RoleStarting.String() {
		w = append(w, fmt.Sprintf("the agents globs %q match no file: this server manages no agent", c.Agents))
	}
	return w
}
