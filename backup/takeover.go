package backup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tandem-ha/tandem/failoverid"
	"github.com/tandem-ha/tandem/internal/fsutil"
	"github.com/tandem-ha/tandem/internal/hooks"
)

// ErrSuperseded: the takeover's journal was replaced or closed by another
// step of the node (nothing of this takeover is written after that).
var ErrSuperseded = errors.New("backup: takeover journal superseded")

// TakeoverConfig is what the takeover procedure needs from the node.
type TakeoverConfig struct {
	// Store is the node's state store, the one writer of state.json: the
	// takeover hands it mutations and keeps no copy of its own, so an
	// operator's change (maintenance) made meanwhile is kept.
	Store *failoverid.Store
	Node  string
	ID    string // this server's failover id
	// LocationFile is the path of primary_location; on takeover it is
	// renamed to LocationFile + ".dormant".
	LocationFile string
	BeforeHook   string
	HookTimeout  time.Duration
	// RunHook runs a hook (default hooks.Run).
	RunHook hooks.Func
	// NextEpoch picks the takeover's epoch from this server's and the
	// highest seen (default failoverid.NextEpoch): the epoch-source seam.
	NextEpoch func(ctx context.Context, own, seen uint64) (uint64, error)
	// RewriteAgents CAS-rewrites every managed address.yaml to point at this
	// server at epoch. Files it could not rewrite are the node's to retry;
	// the takeover goes on. It stops early when ctx ends.
	RewriteAgents func(ctx context.Context, epoch uint64)
	// OnStep, when set, is told every journal step reached (timings).
	OnStep func(step string)
	// OnHookError, when set, is told a hook that failed (status warns).
	OnHookError func(name string, err error)
	Log         logrus.FieldLogger
}

// RunTakeover runs the takeover journal forward to StepLocationDormant,
// persisting every step through the store, so that a crash at any step
// resumes from the next one on restart (I7). With no journal in the store
// it starts one: epoch = max(own, seen) + 1, written to disk before
// anything else happens. The node then starts heartbeating as primary and
// finishes the journal (StepPrimaryHeartbeat, after_takeover, clear).
//
// A before_takeover hook that was cancelled (the node is stopping) or
// killed by a signal is not journaled as done: it runs again on resume.
// The data dir is probed writable before the agents are repointed, so a
// read-only disk cannot leave a fleet pointing at a server that cannot
// record that it took over.
func RunTakeover(ctx context.Context, cfg TakeoverConfig, reason string, from *failoverid.Peer, seenEpoch uint64) (failoverid.Journal, error) {
	log := cfg.Log
	run := cfg.RunHook
	if run == nil {
		run = hooks.Run
	}
	next := cfg.NextEpoch
	if next == nil {
		next = func(_ context.Context, own, seen uint64) (uint64, error) { return failoverid.NextEpoch(own, seen) }
	}
	st := cfg.Store.Get()
	if st.Takeover == nil {
		epoch, err := next(ctx, st.Epoch, seenEpoch)
		if err != nil {
			return failoverid.Journal{}, fmt.Errorf("choose the takeover epoch (ours %d, seen %d): %w", st.Epoch, seenEpoch, err)
		}
		st, err = cfg.Store.Update(func(s *failoverid.State) error {
			if s.Takeover != nil {
				return ErrSuperseded
			}
			s.Epoch = epoch
			s.Role = "taking-over"
			s.Takeover = &failoverid.Journal{Epoch: epoch, Reason: reason, Step: failoverid.StepEpochPersisted, Started: time.Now().UTC(), From: from}
			return nil
		})
		if err != nil {
			return failoverid.Journal{}, fmt.Errorf("persist epoch %d before takeover: %w", epoch, err)
		}
		log.WithFields(logrus.Fields{"epoch": epoch, "reason": reason}).Info("takeover: epoch persisted")
		if cfg.OnStep != nil {
			cfg.OnStep(failoverid.StepEpochPersisted)
		}
	} else {
		log.WithFields(logrus.Fields{"epoch": st.Takeover.Epoch, "step": st.Takeover.Step}).Warn("takeover: resuming an interrupted takeover")
	}
	j := *st.Takeover
	advance := func(step string) error {
		st, err := cfg.Store.Update(func(s *failoverid.State) error {
			if s.Takeover == nil || s.Takeover.Epoch != j.Epoch {
				return ErrSuperseded
			}
			s.Takeover.Step = step
			return nil
		})
		if err != nil {
			return fmt.Errorf("takeover journal (%s): %w", step, err)
		}
		j = *st.Takeover
		log.WithField("step", step).Info("takeover: step done")
		if cfg.OnStep != nil {
			cfg.OnStep(step)
		}
		return nil
	}
	at := func(step string) bool { return failoverid.StepIndex(j.Step) < failoverid.StepIndex(step) }

	if at(failoverid.StepBeforeHook) && cfg.BeforeHook != "" {
		// A failing hook is logged, not fatal: a broken hook must not keep
		// the agents without a server. Without a hook there is nothing to
		// journal (re-running nothing is harmless): no fsync.
		err := run(ctx, "before_takeover", cfg.BeforeHook, cfg.HookTimeout, HookEnv(cfg.Node, cfg.ID, &j), log)
		if cerr := ctx.Err(); cerr != nil {
			return j, cerr
		}
		if err != nil && cfg.OnHookError != nil {
			cfg.OnHookError("before_takeover", err)
		}
		if errors.Is(err, hooks.ErrSignaled) {
			// Killed from outside before it finished: do not record it as
			// done, so a restart runs it again; this run goes on.
			log.WithError(err).Warn("takeover: before_takeover was killed; not journaled as done")
		} else if err := advance(failoverid.StepBeforeHook); err != nil {
			return j, err
		}
	}
	if at(failoverid.StepAgentsRewritten) {
		if err := cfg.Store.Probe(); err != nil {
			return j, fmt.Errorf("takeover stopped before repointing any agent: %w", err)
		}
		if cfg.RewriteAgents != nil {
			cfg.RewriteAgents(ctx, j.Epoch)
		}
		if err := ctx.Err(); err != nil {
			return j, err
		}
		if err := advance(failoverid.StepAgentsRewritten); err != nil {
			return j, err
		}
	}
	if at(failoverid.StepLocationDormant) {
		if err := MakeDormant(cfg.LocationFile); err != nil {
			return j, err
		}
		if err := advance(failoverid.StepLocationDormant); err != nil {
			return j, err
		}
	}
	return j, nil
}

// MakeDormant renames primary_location to primary_location.dormant, durably.
// An already renamed file is fine (a resumed takeover).
func MakeDormant(location string) error {
	err := os.Rename(location, location+".dormant")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("rename %s: %w", location, err)
	}
	return fsutil.SyncDir(filepath.Dir(location))
}

// HookEnv is the environment every takeover hook gets.
func HookEnv(node, id string, j *failoverid.Journal) []string {
	env := []string{"TANDEM_NODE=" + node, "TANDEM_FAILOVER_ID=" + id}
	if j != nil {
		env = append(env, "TANDEM_EPOCH="+strconv.FormatUint(j.Epoch, 10), "TANDEM_REASON="+j.Reason)
		if j.From != nil {
			env = append(env, "TANDEM_OLD_PRIMARY="+j.From.Node, "TANDEM_OLD_PRIMARY_ADDRESS="+j.From.Address)
		}
	}
	return env
}
