package node

import (
	"context"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/protocol"
)

// Fleet is the set of agents a server repoints when it becomes primary and
// watches for a higher token while it is. Today's fleet is the local
// address.yaml files the agents globs match (agentFiles); agents on their
// own hosts plug in here.
type Fleet interface {
	// Rewrite CAS-rewrites every agent to u (takeover or claim); it stops
	// early when ctx ends.
	Rewrite(ctx context.Context, u agentcfg.Update)
	// Scan returns the highest token above own, if any (this server must
	// fence itself), and re-applies u (when not nil) to agents still below
	// own.
	Scan(own failoverid.Token, u *agentcfg.Update) (*failoverid.Token, error)
	// Highest is the highest token among the agents (a takeover's epoch
	// must be above it); a cancelled ctx stops it early.
	Highest(ctx context.Context) failoverid.Token
	// AddressOf is where the server holding t is, as its agents say ("").
	AddressOf(t failoverid.Token) string
	// Status counts the agents for status JSON.
	Status() AgentsStatus
	// EndTerm forgets this server's term as primary (rewrites, failures).
	EndTerm()
	// Totals are lifetime rewrite counts (metrics).
	Totals() (ok, fail uint64)
}

// agentFiles keeps track of the managed address.yaml files: rewrites them
// (takeover, claim, retry) and scans them for a higher epoch (fencing).
type agentFiles struct {
	globs []string
	log   logrus.FieldLogger
	opts  fileOptions

	mu        sync.Mutex
	managed   int
	rewritten int
	failed    map[string]string // path -> why
	tampered  map[string]string // path -> the unsigned higher token it claims
	okTotal   uint64
	failTotal uint64
	cache     map[string]fileFacts // survey's memory; only survey uses it
}

// fileOptions tune agentFiles.
type fileOptions struct {
	// maxSize is max_agent_file_size (0: agentcfg's default).
	maxSize int64
	// trust says whether a file's token is a server's word (its
	// failover_sig verifies); nil trusts every file (insecure mode).
	trust func(agentcfg.Address) bool
}

// fileTrust is the trust check of a server's signer: with a group key a
// token counts as evidence only with a valid failover_sig.
func fileTrust(s *protocol.Signer) func(agentcfg.Address) bool {
	if !s.Secure() {
		return nil
	}
	return func(a agentcfg.Address) bool {
		return s.VerifyTokenSig(a.FailoverSig, a.FailoverID, a.FailoverEpoch, a.StompInterface, a.StompPort) == nil
	}
}

func newAgentFiles(globs []string, log logrus.FieldLogger, opts ...fileOptions) *agentFiles {
	a := &agentFiles{globs: globs, log: log, failed: map[string]string{}, tampered: map[string]string{}}
	if len(opts) > 0 {
		a.opts = opts[0]
	}
	return a
}

// rewrite CAS-rewrites every managed file to u (takeover or claim). Only
// files below u.Epoch change. Files that could not be rewritten are kept in
// the failed list for status and retried by scan.
func (a *agentFiles) Rewrite(ctx context.Context, u agentcfg.Update) {
	paths, err := agentcfg.Expand(a.globs)
	if err != nil {
		a.log.WithError(err).Error("expanding the managed agent globs")
		return
	}
	a.apply(ctx, paths, u, true)
}

func (a *agentFiles) apply(ctx context.Context, paths []string, u agentcfg.Update, all bool) {
	// In slices, so that a cancelled context (the role ended, the process
	// is stopping) stops a large rewrite within one slice.
	const slice = 2048
	res := make([]agentcfg.Result, 0, len(paths))
	for i := 0; i < len(paths) && ctx.Err() == nil; i += slice {
		res = append(res, agentcfg.RewriteAll(paths[i:min(i+slice, len(paths))], u, agentcfg.BatchOptions{MaxFileSize: a.opts.maxSize})...)
	}
	// Keep survey's cache warm: what we just wrote need not be re-parsed.
	fresh := make(map[string]fileFacts, len(res))
	for _, r := range res {
		if r.Outcome != agentcfg.Rewritten {
			continue
		}
		if fi, err := os.Stat(r.Path); err == nil {
			f := fileFacts{mod: fi.ModTime(), size: fi.Size(), valid: true,
				token:   failoverid.Token{ID: r.After.FailoverID, Epoch: r.After.FailoverEpoch},
				addr:    net.JoinHostPort(r.After.StompInterface, strconv.Itoa(r.After.StompPort)),
				trusted: a.opts.trust == nil || a.opts.trust(r.After)}
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				f.ino = st.Ino
			}
			fresh[r.Path] = f
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cache == nil {
		a.cache = map[string]fileFacts{}
	}
	for p, f := range fresh {
		a.cache[p] = f
	}
	if all {
		a.managed = len(paths)
		a.rewritten = 0
	}
	for _, r := range res {
		switch r.Outcome {
		case agentcfg.Rewritten:
			a.rewritten++
			a.okTotal++
			delete(a.failed, r.Path)
		case agentcfg.Unchanged:
			delete(a.failed, r.Path)
		default:
			a.failTotal++
			why := r.Outcome.String()
			if r.Err != nil {
				why = strings.TrimPrefix(r.Err.Error(), r.Path+": ") // the path is the key already
			}
			a.failed[r.Path] = why
		}
	}
	rewritten, failed := a.rewritten, len(a.failed)
	a.log.WithFields(logrus.Fields{"epoch": u.Epoch, "files": len(paths), "rewritten": rewritten, "failed": failed}).Info("agent files rewritten")
}

// fileFacts is what scan remembers of a file, to skip re-parsing files that
// did not change since the last scan.
type fileFacts struct {
	mod   time.Time
	size  int64
	ino   uint64
	token failoverid.Token
	addr  string // stomp_interface:stomp_port
	valid bool
	// trusted: the token carries a valid server signature (or no group key
	// is configured). Only trusted tokens are evidence of a higher epoch.
	trusted bool
}

// scan looks at every managed file (re-parsing only those whose size, mtime
// or inode changed). It returns the highest token above own, if any (this
// server must fence itself), and re-applies u to files still below own.Epoch
// (new agents, or files a rewrite failed on).
func (a *agentFiles) Scan(own failoverid.Token, u *agentcfg.Update) (*failoverid.Token, error) {
	max, behind, err := a.survey(context.Background())
	if err != nil {
		return nil, err
	}
	var higher *failoverid.Token
	if max.Above(own) {
		higher = &max
	}
	var below []string
	a.mu.Lock()
	for _, b := range behind {
		switch {
		case b.token.Compare(own) < 0:
			below = append(below, b.path)
		case b.token == own:
			// Bound to us (fixed by hand, `agents repoint`, or by an
			// earlier retry): no longer a failure to report.
			delete(a.failed, b.path)
		}
	}
	a.mu.Unlock()
	if higher == nil && u != nil && len(below) > 0 {
		a.log.WithField("files", len(below)).Info("rewriting agent files still below our epoch")
		a.apply(context.Background(), below, *u, false)
	}
	return higher, nil
}

// Highest is the highest token among the managed files. A cancelled ctx
// stops it early (its partial work still warms the cache).
func (a *agentFiles) Highest(ctx context.Context) failoverid.Token {
	max, _, err := a.survey(ctx)
	if err != nil && ctx.Err() == nil {
		a.log.WithError(err).Warn("reading the managed agent files")
	}
	return max
}

type pathToken struct {
	path  string
	token failoverid.Token
}

// survey returns the highest token among the files and every file's token.
// When ctx ends it stops, merges what it read into the cache and returns
// ctx's error.
func (a *agentFiles) survey(ctx context.Context) (failoverid.Token, []pathToken, error) {
	paths, err := agentcfg.Expand(a.globs)
	if err != nil {
		return failoverid.Token{}, nil, err
	}
	a.mu.Lock()
	if a.cache == nil {
		a.cache = map[string]fileFacts{}
	}
	cache := a.cache
	a.mu.Unlock()
	var max failoverid.Token
	all := make([]pathToken, 0, len(paths))
	seen := make(map[string]fileFacts, len(paths))
	var untrusted []pathToken
	for i, p := range paths {
		if i%256 == 0 && ctx.Err() != nil {
			a.mu.Lock()
			for k, v := range seen {
				a.cache[k] = v
			}
			a.mu.Unlock()
			return max, all, ctx.Err()
		}
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		var ino uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
		f, ok := cache[p]
		if !ok || !f.mod.Equal(fi.ModTime()) || f.size != fi.Size() || f.ino != ino {
			f = fileFacts{mod: fi.ModTime(), size: fi.Size(), ino: ino}
			if addr, err := agentcfg.ReadFileWith(p, agentcfg.ReadOptions{MaxFileSize: a.opts.maxSize}); err == nil {
				f.valid = true
				f.token = failoverid.Token{ID: addr.FailoverID, Epoch: addr.FailoverEpoch}
				f.addr = net.JoinHostPort(addr.StompInterface, strconv.Itoa(addr.StompPort))
				f.trusted = a.opts.trust == nil || a.opts.trust(addr)
			}
		}
		seen[p] = f
		if !f.valid {
			continue // invalid files are reported by rewrites and `agents list`
		}
		all = append(all, pathToken{p, f.token}) // Scan claims files below us, signed or not
		if !f.trusted {
			if f.token.Epoch > 0 {
				untrusted = append(untrusted, pathToken{p, f.token})
			}
			continue // an unsigned token is nobody's evidence
		}
		if f.token.Above(max) {
			max = f.token
		}
	}
	// Tampered: an unsigned token above every signed one (it would have
	// fenced or steered a takeover if files were trusted as they stand).
	tampered := map[string]string{}
	for _, u := range untrusted {
		if u.token.Above(max) {
			tampered[u.path] = u.token.String()
		}
	}
	a.mu.Lock()
	a.cache = seen
	a.managed = len(paths)
	for p := range a.tampered {
		if _, still := tampered[p]; !still {
			delete(a.tampered, p)
		}
	}
	for p, tok := range tampered {
		if _, known := a.tampered[p]; !known {
			a.log.WithFields(logrus.Fields{"file": p, "token": tok}).Warn("an agent file claims a token without a valid server signature (failover_sig): ignored as evidence; check who wrote it")
		}
		a.tampered[p] = tok
	}
	a.mu.Unlock()
	return max, all, nil
}

// addressOf is the stomp_interface:stomp_port of a managed file bound to t,
// as last surveyed ("" if none): where the server holding t is.
func (a *agentFiles) AddressOf(t failoverid.Token) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, f := range a.cache {
		if f.valid && f.trusted && f.token == t {
			return f.addr
		}
	}
	return ""
}

func (a *agentFiles) Status() AgentsStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := AgentsStatus{Managed: a.managed, Rewritten: a.rewritten, Failed: len(a.failed), Tampered: len(a.tampered)}
	var paths []string
	for p := range a.failed {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for i, p := range paths {
		if i == 20 {
			break
		}
		s.FailedFiles = append(s.FailedFiles, FailedFile{Path: p, Error: a.failed[p]})
	}
	return s
}

// endTerm forgets what this server rewrote as primary: once it is a backup
// or fenced, the files are another server's to keep, so its status must not
// go on reporting its old rewrites or failures (nor warn about retries it
// no longer makes). Lifetime totals (metrics) are kept.
func (a *agentFiles) EndTerm() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rewritten = 0
	a.failed = map[string]string{}
}

func (a *agentFiles) Totals() (ok, fail uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.okTotal, a.failTotal
}
