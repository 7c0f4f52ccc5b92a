package agentcfg

import (
	"bytes"
	"fmt"
	"os"
	"sync"

	"github.com/tandem-ha/tandem/internal/fsutil"
	"golang.org/x/sys/unix"
	"gopkg.in/yaml.v3"
)

// Flusher is a group commit for the single-file rewrites (CompareAndSwapWith,
// SetFailoverServersWith with BatchOptions.Flusher) of a long-lived process
// that rewrites many files at about the same time: a fleet of agents, each
// compare-and-swapping its own address.yaml after one broadcast rebind.
//
// Without it each rewrite fsyncs its temporary file and its directory: two
// flushes of the disk per file, and a thread blocked in each. Through a
// Flusher a rewrite stages its data without fsync, waits for a syncfs(2) of
// the file system that started after that (so the data is on disk before
// the rename, as with fsync), renames, and waits for another syncfs (so the
// rename is durable before Rewritten is reported). One syncfs serves every
// rewrite that was waiting for it. The guarantees are CompareAndSwap's: a
// crash leaves each file old or new, Rewritten means durable, and a failed
// sync is Failed (before the rename the file is untouched; after it the
// result says the new content is not confirmed durable). A sync error fails
// the rewrites that were under way when it was seen, not later ones.
//
// syncfs flushes the whole file system, other processes' data included: a
// lone writer (one agent) is better served by the fsync path.
//
// A Flusher also keeps, per file, the parse of the content it last read or
// wrote there: the next rewrite of a file whose bytes are still exactly
// those is not parsed again (the edit's self-check still parses what it
// writes). Only small parses are kept (maxCachedFile, maxCachedNodes: a
// real address.yaml is a few dozen nodes), so padded files cost no memory.
//
// The guarantees hold on Linux, where the flush is syncfs(2) and reports
// writeback errors; elsewhere it is sync(2), which does neither, so a
// fleet there should not use a Flusher.
type Flusher struct {
	syncs syncGroups
	slots chan struct{} // nil: unbounded
	// open bounds the rewrites under way (each holds its directory, lock
	// and temporary file open, also while it waits for a sync): a burst
	// of 10,000 must not run the process out of descriptors.
	open chan struct{}

	mu   sync.Mutex
	docs map[string]*doc // by path: the parse of the content last seen there
}

// MaxRewritesUnderWay bounds a Flusher's rewrites holding files open at
// once; one sync still serves all of them.
const MaxRewritesUnderWay = 512

func (f *Flusher) enter() { f.open <- struct{}{} }
func (f *Flusher) leave() { <-f.open }

// maxCachedFile and maxCachedNodes bound the parses a Flusher keeps.
const (
	maxCachedFile  = 4 << 10
	maxCachedNodes = 128
)

// parse is loadBounded through the cache: content equal byte for byte to
// what was last parsed for path reuses that parse (docs are never modified
// once made). The doc's self-check parses go through the cache too, so a
// file the Flusher wrote is known when it is next rewritten. The caller
// holds a slot (rewriteLocked).
func (f *Flusher) parse(path string, data []byte) (*doc, error) {
	f.mu.Lock()
	c := f.docs[path]
	f.mu.Unlock()
	if c != nil && bytes.Equal(c.data, data) {
		return c, nil
	}
	if len(data) > bigFile {
		// Big files are parsed one at a time (loadBounded): a few padded
		// files must not hold every slot while they queue for it.
		f.release()
		defer f.acquire()
	}
	d, err := loadBounded(data)
	if err != nil || len(data) > maxCachedFile || d.root == nil || countNodes(d.root, maxCachedNodes+1) > maxCachedNodes {
		return d, err
	}
	d.parse = func(b []byte) (*doc, error) { return f.parse(path, b) }
	f.mu.Lock()
	f.docs[path] = d
	f.mu.Unlock()
	return d, nil
}

// NewFlusher returns a Flusher. parallel bounds how many of its rewrites
// read, parse, edit and stage at once (the CPU and metadata work; waits for
// a lock or a sync do not count): a few per core keep a burst of thousands
// of rewrites from running as thousands of threads. 0 or less: unbounded.
func NewFlusher(parallel int) *Flusher {
	f := &Flusher{syncs: syncGroups{dev: map[uint64]*groupSync{}, flush: (*fsutil.FS).Sync}, docs: map[string]*doc{}, open: make(chan struct{}, MaxRewritesUnderWay)}
	if parallel > 0 {
		f.slots = make(chan struct{}, parallel)
	}
	return f
}

// Close releases the file system handles. Call it once no rewrite through
// the Flusher is under way; a later rewrite opens them again.
func (f *Flusher) Close() { f.syncs.close() }

func (f *Flusher) acquire() {
	if f.slots != nil {
		f.slots <- struct{}{}
	}
}

func (f *Flusher) release() {
	if f.slots != nil {
		<-f.slots
	}
}

// countNodes counts n's nodes, stopping past limit.
func countNodes(n *yaml.Node, limit int) int {
	c := 1
	for _, k := range n.Content {
		if c > limit {
			break
		}
		c += countNodes(k, limit-c)
	}
	return c
}

// write is rewriteLocked's end through the group commit: the caller holds
// the file's lock and a slot, which write releases.
func (f *Flusher) write(r Result, t *target, out []byte, st *unix.Stat_t) Result {
	gs, err := f.syncs.register(t.dir)
	var staged *fsutil.Staged
	var written os.FileInfo
	var mark uint64
	if err == nil {
		mark = gs.mark()
		staged, err = t.dir.Stage(t.name, out, st, fsutil.Options{NoSync: true})
	}
	if err == nil {
		written = staged.Info
	}
	f.release()
	if err == nil {
		if err = gs.wait(mark); err != nil {
			staged.Abort()
		}
	}
	if err == nil {
		err = staged.Commit()
	}
	if err == nil {
		if err = gs.wait(mark); err != nil {
			err = fmt.Errorf("%s: written but not confirmed durable: %w", r.Path, err)
		}
	}
	if err != nil {
		r.Outcome, r.Err, r.After = Failed, err, r.Before
		return r
	}
	r.Outcome, r.Written = Rewritten, written
	return r
}
