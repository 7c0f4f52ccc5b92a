package node

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
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
	// Close releases what the fleet holds (file watches). Safe twice.
	Close() error
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
	paths     []string             // the managed files at the last full survey
	progDone  int                  // files done by the rewrite under way
	progTotal int                  // its size (0: no rewrite under way)
	// progressHook, when set (tests), is called at every progress step.
	progressHook func()
	changes      *changeWatch // which files changed since the last survey
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
	a := &agentFiles{globs: globs, log: log, failed: map[string]string{}, tampered: map[string]string{}, changes: newChangeWatch(log)}
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
	a.setProgress(0, len(paths))
	defer a.setProgress(0, 0)
	for i := 0; i < len(paths) && ctx.Err() == nil; i += slice {
		base := i
		opt := agentcfg.BatchOptions{MaxFileSize: a.opts.maxSize, Progress: func(done, _ int) { a.setProgress(base+done, len(paths)) }}
		res = append(res, agentcfg.RewriteAll(paths[i:min(i+slice, len(paths))], u, opt)...)
		if len(paths) > slice {
			a.log.WithFields(logrus.Fields{"epoch": u.Epoch, "done": min(i+slice, len(paths)), "files": len(paths)}).Info("rewriting agent files")
		}
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
	logged := 0
	for _, r := range res {
		if why, bad := a.failed[r.Path]; bad {
			if logged == maxFailedLogged {
				a.log.WithField("more", failed-logged).Warn("more agent files could not be rewritten (tandem agents list)")
				break
			}
			a.log.WithFields(logrus.Fields{"file": r.Path, "why": why}).Warn("agent file not rewritten; retried at the next check")
			logged++
		}
	}
	a.log.WithFields(logrus.Fields{"epoch": u.Epoch, "files": len(paths), "rewritten": rewritten, "failed": failed}).Info("agent files rewritten")
}

// maxFailedLogged bounds the warnings one rewrite logs about its failures.
const maxFailedLogged = 20

// setProgress records how far the rewrite under way is (total 0: none).
func (a *agentFiles) setProgress(done, total int) {
	a.mu.Lock()
	a.progDone, a.progTotal = done, total
	hook := a.progressHook
	a.mu.Unlock()
	if hook != nil && total > 0 {
		hook()
	}
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
	// An idle server re-reads only what changed (inotify), and lists and
	// stats every file only every fullSurveyEvery (new agents, missed
	// events): its idle cost does not grow with the number of files.
	dirty, full := a.changes.take(time.Now())
	var paths []string
	if full {
		var err error
		if paths, err = agentcfg.Expand(a.globs); err != nil {
			return failoverid.Token{}, nil, err
		}
	}
	a.mu.Lock()
	if a.cache == nil {
		a.cache = map[string]fileFacts{}
	}
	cache := a.cache
	if !full {
		paths = a.paths
		// A file that appeared in a watched directory (matching a glob)
		// joins at once, not at the next full survey.
		for p := range dirty {
			if _, known := cache[p]; !known && a.matches(p) && !slices.Contains(paths, p) {
				paths = append(slices.Clip(paths), p)
			}
		}
	}
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
		f, ok := cache[p]
		if full || !ok || dirty[p] { // else unchanged since the last survey: no syscall
			if f, ok = a.look(p, f, ok); !ok {
				continue
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
	return a.finishSurvey(paths, seen, max, all, untrusted, full)
}

// look stats p and re-reads it when it changed since the cached facts f
// (ok: f is cached). It returns false when p is gone.
func (a *agentFiles) look(p string, f fileFacts, cached bool) (fileFacts, bool) {
	fi, err := os.Stat(p)
	if err != nil {
		return fileFacts{}, false
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	if !cached || !f.mod.Equal(fi.ModTime()) || f.size != fi.Size() || f.ino != ino {
		f = fileFacts{mod: fi.ModTime(), size: fi.Size(), ino: ino}
		if addr, err := agentcfg.ReadFileWith(p, agentcfg.ReadOptions{MaxFileSize: a.opts.maxSize}); err == nil {
			f.valid = true
			f.token = failoverid.Token{ID: addr.FailoverID, Epoch: addr.FailoverEpoch}
			f.addr = net.JoinHostPort(addr.StompInterface, strconv.Itoa(addr.StompPort))
			f.trusted = a.opts.trust == nil || a.opts.trust(addr)
		}
	}
	return f, true
}

// finishSurvey stores what a survey saw and reports tampered files.
func (a *agentFiles) finishSurvey(paths []string, seen map[string]fileFacts, max failoverid.Token, all, untrusted []pathToken, full bool) (failoverid.Token, []pathToken, error) {
	if full {
		a.changes.watchAll(paths)
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
	a.paths = paths
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
	if a.progTotal > 0 {
		s.Rewriting = &Progress{Done: a.progDone, Total: a.progTotal}
	}
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

// matches reports whether p matches one of the managed globs.
func (a *agentFiles) matches(p string) bool {
	for _, g := range a.globs {
		if ok, _ := filepath.Match(g, p); ok {
			return true
		}
	}
	return false
}

// fullSurveyEvery is how often a survey lists and stats every managed file
// even when no change was seen (new agent directories, lost events).
const fullSurveyEvery = time.Minute

// changeWatch tells a survey which managed files changed since the last
// one (inotify on their directories), so that an idle server costs the
// same with 10 files as with 10,000. Without inotify (or past its watch
// limit), after an event overflow, and every fullSurveyEvery, it asks for
// a full survey instead.
type changeWatch struct {
	log logrus.FieldLogger

	mu       sync.Mutex
	w        *fsnotify.Watcher // nil: not watching (every survey is full)
	dirs     map[string]bool
	dirty    map[string]bool
	lost     bool // events were lost: the next survey is full
	lastFull time.Time
	closed   bool
	done     chan struct{}
}

func newChangeWatch(log logrus.FieldLogger) *changeWatch {
	return &changeWatch{log: log, dirs: map[string]bool{}, dirty: map[string]bool{}, done: make(chan struct{})}
}

// take returns the files changed since the last call and whether this
// survey must be a full one.
func (c *changeWatch) take(now time.Time) (map[string]bool, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	full := c.w == nil || c.lost || c.lastFull.IsZero() || now.Sub(c.lastFull) >= fullSurveyEvery
	if full {
		c.lost = false
		c.lastFull = now
	}
	d := c.dirty
	c.dirty = map[string]bool{}
	return d, full
}

// watchAll watches the directories of paths (after a full survey).
func (c *changeWatch) watchAll(paths []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if c.w == nil {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			c.log.WithError(err).Debug("no inotify: every survey of the agent files is a full one")
			c.closed = true // do not try again
			return
		}
		c.w = w
		go c.loop(w)
	}
	for _, p := range paths {
		d := filepath.Dir(p)
		if c.dirs[d] {
			continue
		}
		if err := c.w.Add(d); err != nil {
			// Past the watch limit: stay correct with full surveys.
			c.log.WithError(err).Warn("cannot watch every agent directory (fs.inotify.max_user_watches?): idle surveys stat every file")
			c.w.Close()
			c.w, c.closed = nil, true
			return
		}
		c.dirs[d] = true
	}
}

func (c *changeWatch) loop(w *fsnotify.Watcher) {
	for {
		select {
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			c.mu.Lock()
			c.dirty[filepath.Clean(ev.Name)] = true
			if len(c.dirty) > 1<<16 {
				c.dirty, c.lost = map[string]bool{}, true
			}
			c.mu.Unlock()
		case _, ok := <-w.Errors:
			if !ok {
				return
			}
			c.mu.Lock()
			c.lost = true // an overflow: events were dropped
			c.mu.Unlock()
		}
	}
}

// Close stops watching. Safe twice.
func (c *changeWatch) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.w != nil {
		err := c.w.Close()
		c.w = nil
		return err
	}
	return nil
}

// Close releases the file watches.
func (a *agentFiles) Close() error { return a.changes.Close() }
