package node

import (
	"context"
	"sort"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/agentcfg"
	"github.com/tandem-ha/tandem/failoverid"
)

// agentFiles keeps track of the managed address.yaml files: rewrites them
// (takeover, claim, retry) and scans them for a higher epoch (fencing).
type agentFiles struct {
	globs []string
	log   logrus.FieldLogger

	mu        sync.Mutex
	managed   int
	rewritten int
	failed    map[string]string // path -> why
	okTotal   uint64
	failTotal uint64
}

func newAgentFiles(globs []string, log logrus.FieldLogger) *agentFiles {
	return &agentFiles{globs: globs, log: log, failed: map[string]string{}}
}

// rewrite CAS-rewrites every managed file to u (takeover or claim). Only
// files below u.Epoch change. Files that could not be rewritten are kept in
// the failed list for status and retried by scan.
func (a *agentFiles) rewrite(ctx context.Context, u agentcfg.Update) {
	paths, err := agentcfg.Expand(a.globs)
	if err != nil {
		a.log.WithError(err).Error("expanding the managed agent globs")
		return
	}
	a.apply(paths, u, true)
}

func (a *agentFiles) apply(paths []string, u agentcfg.Update, all bool) {
	res := agentcfg.RewriteAll(paths, u, agentcfg.BatchOptions{})
	a.mu.Lock()
	defer a.mu.Unlock()
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
				why = r.Err.Error()
			}
			a.failed[r.Path] = why
		}
	}
	rewritten, failed := a.rewritten, len(a.failed)
	a.log.WithFields(logrus.Fields{"epoch": u.Epoch, "files": len(paths), "rewritten": rewritten, "failed": failed}).Info("agent files rewritten")
}

// scan reads every managed file. It returns the highest token above own, if
// any (this server must fence itself), and re-applies u to files still below
// own.Epoch (new agents, or files a rewrite failed on).
func (a *agentFiles) scan(own failoverid.Token, u *agentcfg.Update) (*failoverid.Token, error) {
	paths, err := agentcfg.Expand(a.globs)
	if err != nil {
		return nil, err
	}
	var higher *failoverid.Token
	var behind []string
	for _, p := range paths {
		addr, err := agentcfg.ReadFile(p)
		if err != nil {
			continue // invalid files are reported by rewrites and `agents list`
		}
		switch {
		case addr.FailoverEpoch > own.Epoch:
			if higher == nil || addr.FailoverEpoch > higher.Epoch {
				higher = &failoverid.Token{ID: addr.FailoverID, Epoch: addr.FailoverEpoch}
			}
		case addr.FailoverEpoch < own.Epoch:
			behind = append(behind, p)
		}
	}
	a.mu.Lock()
	a.managed = len(paths)
	a.mu.Unlock()
	if higher == nil && u != nil && len(behind) > 0 {
		a.log.WithField("files", len(behind)).Info("rewriting agent files still below our epoch")
		a.apply(behind, *u, false)
	}
	return higher, nil
}

func (a *agentFiles) status() AgentsStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := AgentsStatus{Managed: a.managed, Rewritten: a.rewritten, Failed: len(a.failed)}
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

func (a *agentFiles) totals() (ok, fail uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.okTotal, a.failTotal
}
