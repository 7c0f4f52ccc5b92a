package agentcfg

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/internal/fsutil"
)

// BatchOptions tune RewriteAll, and the single-file rewrites
// (CompareAndSwapWith, SetFailoverServersWith) take some of them.
type BatchOptions struct {
	// Force skips the epoch comparison (see CompareAndSwap).
	Force bool
	// Workers is the number of files processed in parallel; 0 picks a
	// default suited to I/O-bound work.
	Workers int
	// Progress, when not nil, is called after each file with the number of
	// files done so far. It is called from several goroutines, serially.
	// The final call (done == total) comes after the closing sync, when
	// every result is final.
	Progress func(done, total int)
	// GroupSize bounds how many files one worker holds locked and staged at
	// once; 0 means DefaultGroupSize. It is further bounded by the open-file
	// limit.
	GroupSize int
	// MaxFileSize is the largest file read, in bytes (max_agent_file_size);
	// 0 means DefaultMaxFileSize. A larger file is Invalid, found before it
	// is parsed.
	MaxFileSize int64
	// LockTimeout bounds the wait for a file's lock; 0 means
	// DefaultLockTimeout. A file whose lock stays held is Failed
	// (ErrLockTimeout) and the batch goes on; the caller retries it later.
	LockTimeout time.Duration

	// Flusher, for the single-file rewrites (CompareAndSwapWith,
	// SetFailoverServersWith; RewriteAll has its own), replaces the fsync of
	// the file and of its directory with a group commit shared by the
	// rewrites of the process (see Flusher).
	Flusher *Flusher

	// flush is the file system flush; nil means (*fsutil.FS).Sync. Tests set
	// it to make a flush fail.
	flush func(*fsutil.FS) error
}

// parse parses the content of the file at path, through the Flusher's
// cache when there is one.
func (o BatchOptions) parse(path string, data []byte) (*doc, error) {
	if o.Flusher != nil {
		return o.Flusher.parse(path, data)
	}
	return loadBounded(data)
}

func (o BatchOptions) lockTimeout() time.Duration {
	if o.LockTimeout > 0 {
		return o.LockTimeout
	}
	return DefaultLockTimeout
}

// DefaultGroupSize is BatchOptions.GroupSize's default.
const DefaultGroupSize = 256

// groupSize keeps workers × group lock descriptors well under RLIMIT_NOFILE.
func groupSize(workers, want int) int {
	g := want
	if g <= 0 {
		g = DefaultGroupSize
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < 1<<20 {
		if per := (int(lim.Cur) - 128) / (2 * workers); per < g {
			g = per
		}
	}
	return max(g, 1)
}

// groupSync is a group commit of syncfs calls on one file system: a caller
// waits for a sync that started after it called, and one sync serves every
// worker that was waiting for it. The handle is opened before any data
// written through the group reaches that file system, so syncfs reports
// every writeback error of it.
//
// Linux reports a writeback error once per descriptor, to the first syncfs
// after it: a later sync succeeds although the data was lost. A writer
// therefore takes a mark (errs) before it writes and passes it to wait; an
// error seen by any sync since the mark fails its wait. A batch (RewriteAll)
// marks 0 for every file, so an error fails the rest of the batch; a
// Flusher's writers each mark their own start, so a long-lived process
// recovers once the file system does.
type groupSync struct {
	fs      *fsutil.FS
	flush   func(*fsutil.FS) error
	mu      sync.Mutex
	cond    *sync.Cond
	running bool
	started uint64 // syncs started
	done    uint64 // syncs finished
	errs    uint64 // sync errors seen
	err     error  // the last one
}

type syncGroups struct {
	mu    sync.Mutex
	dev   map[uint64]*groupSync
	flush func(*fsutil.FS) error
}

// register opens the file system holding dir (through its handle) if not
// yet open. Call it before writing anything on that file system.
func (g *syncGroups) register(dir *fsutil.Dir) (*groupSync, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	dev := dir.Dev()
	if s := g.dev[dev]; s != nil {
		return s, nil
	}
	f, err := dir.OpenFS()
	if err != nil {
		return nil, err
	}
	s := &groupSync{fs: f, flush: g.flush}
	s.cond = sync.NewCond(&s.mu)
	g.dev[dev] = s
	return s, nil
}

func (g *syncGroups) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for dev, s := range g.dev {
		s.fs.Close()
		delete(g.dev, dev)
	}
}

// mark is the count of sync errors seen so far: take it before writing.
func (s *groupSync) mark() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errs
}

// wait returns once a sync that started after the call has finished: nil
// if no sync failed since mark was taken.
func (s *groupSync) wait(mark uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ticket := s.started + 1 // the next sync to start begins after this call
	for s.done < ticket && s.errs == mark {
		if s.running {
			s.cond.Wait()
			continue
		}
		s.running = true
		s.started++
		n := s.started
		s.mu.Unlock()
		err := s.flush(s.fs)
		s.mu.Lock()
		s.running = false
		s.done = n
		if err != nil {
			s.errs++
			s.err = err
		}
		s.cond.Broadcast()
	}
	if s.errs != mark {
		return s.err
	}
	return nil
}

// RewriteAll compare-and-swaps every file in paths with u (the rule of
// CompareAndSwap) and returns one Result per path, in input order. It never
// stops at a bad file: a file that cannot be read, parsed or edited gets its
// own Invalid or Failed result and is left byte-identical.
//
// Durability is batched, see the package documentation: a worker locks a
// group of up to GroupSize (256) files, stages their new content in temporary files
// without fsync, flushes the file system once (syncfs), renames the
// temporaries over the targets and unlocks; a final syncfs after all groups
// makes the renames durable, and only then is a result reported Rewritten.
// A crash at any point leaves each file either old or new.
func RewriteAll(paths []string, u Update, opt BatchOptions) []Result {
	opt.Flusher = nil // a batch has its own group commit
	res := make([]Result, len(paths))
	for i, p := range paths {
		res[i].Path = p
	}
	if err := u.Validate(); err != nil {
		for i := range res {
			res[i].Outcome, res[i].Err = Failed, err
		}
		return res
	}
	total := len(paths)
	if total == 0 {
		return res
	}
	workers := opt.Workers
	if workers <= 0 {
		workers = 2 * runtime.GOMAXPROCS(0)
		if workers < 4 {
			workers = 4
		}
		if workers > 16 {
			workers = 16
		}
	}
	if workers > total {
		workers = total
	}

	group := groupSize(workers, opt.GroupSize)
	flush := opt.flush
	if flush == nil {
		flush = (*fsutil.FS).Sync
	}
	syncs := &syncGroups{dev: map[uint64]*groupSync{}, flush: flush}
	defer syncs.close()
	var (
		next    atomic.Int64
		mu      sync.Mutex // guards done, Progress calls
		done    int
		pending = make([]bool, total) // committed, durability not yet confirmed
	)
	progress := func(n int) {
		mu.Lock()
		done += n
		if opt.Progress != nil && done < total {
			opt.Progress(done, total)
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				start := int(next.Add(int64(group))) - group
				if start >= total {
					return
				}
				end := min(start+group, total)
				for i := start; i < end; {
					n, committed := rewriteGroup(syncs, paths, res, i, end, u, opt)
					mu.Lock()
					for _, j := range committed {
						pending[j] = true
					}
					mu.Unlock()
					progress(n)
					i += n
				}
			}
		}()
	}
	wg.Wait()

	// One closing sync per file system makes every rename durable.
	var syncErr error
	for _, s := range syncs.dev {
		if err := s.wait(0); err != nil {
			syncErr = errors.Join(syncErr, err)
		}
	}
	for i := range res {
		if !pending[i] {
			continue
		}
		if syncErr != nil {
			res[i].Outcome = Failed
			res[i].Err = fmt.Errorf("%s: written but not confirmed durable: %w", res[i].Path, syncErr)
			continue
		}
		res[i].Outcome = Rewritten
	}
	if opt.Progress != nil && total > 0 {
		opt.Progress(total, total)
	}
	return res
}

// rewriteGroup processes paths[i:end] as far as it can lock without waiting
// (the first lock may wait): no worker ever waits for a lock while holding
// another, so groups cannot deadlock with each other, with other processes or
// with a path listed twice. It returns how many paths it handled and the
// indexes it renamed (pending durability).
func rewriteGroup(syncs *syncGroups, paths []string, res []Result, i, end int, u Update, opt BatchOptions) (n int, committed []int) {
	type item struct {
		idx    int
		t      *target
		lock   *fileLock
		staged *fsutil.Staged
		fs     *groupSync
	}
	var items []item
	defer func() {
		for _, it := range items {
			it.lock.unlock()
			it.t.close()
		}
	}()
	for j := i; j < end; j++ {
		r := &res[j]
		t, err := openTarget(paths[j])
		if err != nil {
			r.Outcome, r.Err = Failed, err
			n++
			continue
		}
		l, err := lockFile(t, len(items) == 0, opt.lockTimeout())
		if err == errWouldBlock {
			t.close()
			break // commit what we hold; the next group starts here, waiting
		}
		n++
		if err != nil {
			t.close()
			r.Outcome, r.Err = Failed, err
			continue
		}
		items = append(items, item{idx: j, t: t, lock: l})
		out, st := decide(r, t, u, opt)
		if out == nil {
			continue
		}
		gs, err := syncs.register(t.dir)
		if err != nil {
			r.Outcome, r.Err, r.After = Failed, err, r.Before
			continue
		}
		staged, err := t.dir.Stage(t.name, out, st, fsutil.Options{NoSync: true})
		if err != nil {
			r.Outcome, r.Err, r.After = Failed, err, r.Before
			continue
		}
		items[len(items)-1].staged = staged
		items[len(items)-1].fs = gs
	}

	// Flush the staged data before any rename.
	var err error
	waited := map[*groupSync]bool{}
	for _, it := range items {
		if it.staged != nil && !waited[it.fs] {
			waited[it.fs] = true
			if err = it.fs.wait(0); err != nil {
				break
			}
		}
	}
	if err != nil {
		for _, it := range items {
			if it.staged != nil {
				it.staged.Abort()
				r := &res[it.idx]
				r.Outcome, r.Err, r.After = Failed, err, r.Before
			}
		}
		return n, nil
	}
	for _, it := range items {
		if it.staged == nil {
			continue
		}
		r := &res[it.idx]
		if err := it.staged.Commit(); err != nil {
			r.Outcome, r.Err, r.After = Failed, err, r.Before
			continue
		}
		committed = append(committed, it.idx)
	}
	return n, committed
}

// Expand expands the managed globs (filepath.Glob syntax; "**" is not
// special) into a sorted, de-duplicated list of cleaned paths. Temporary
// files left by an interrupted write and lock files are skipped. Anything
// else that matches is listed, also a directory or a FIFO: readers and
// rewrites report it (Failed, "is a directory, expected a regular file")
// instead of it silently leaving the managed set. A malformed pattern is an
// error naming it (ErrBadPattern).
func Expand(globs []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, g := range globs {
		m, err := filepath.Glob(g)
		if err != nil {
			return nil, fmt.Errorf("%w %q: %v", ErrBadPattern, g, err)
		}
		for _, p := range m {
			p = filepath.Clean(p)
			if seen[p] || fsutil.IsTemp(p) || isLockName(p) {
				continue
			}
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out, nil
}
