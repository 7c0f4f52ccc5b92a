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

// TakeoverConfig is what the takeover procedure needs from the node.
type TakeoverConfig struct {
	DataDir string
	Node    string
	ID      string // this server's failover id
	// LocationFile is the path of primary_location; on takeover it is
	// renamed to LocationFile + ".dormant".
	LocationFile string
	BeforeHook   string
	HookTimeout  time.Duration
	// RewriteAgents CAS-rewrites every managed address.yaml to point at this
	// server at epoch. Files it could not rewrite are the node's to retry;
	// the takeover goes on.
	RewriteAgents func(ctx context.Context, epoch uint64)
	Log           logrus.FieldLogger
}

// RunTakeover runs the takeover journal in st forward to StepLocationDormant,
// persisting st after every step, so that a crash at any step resumes from
// the next one on restart (I7). If st has no journal yet, it starts one:
// epoch = max(own, seen) + 1, written to disk before anything else happens.
// The node then starts heartbeating as primary and finishes the journal
// (StepPrimaryHeartbeat, after_takeover, clear).
func RunTakeover(ctx context.Context, cfg TakeoverConfig, st *failoverid.State, reason string, from *failoverid.Peer, seenEpoch uint64) error {
	log := cfg.Log
	if st.Takeover == nil {
		epoch := failoverid.NextEpoch(st.Epoch, seenEpoch)
		next := *st
		next.Epoch = epoch
		next.Role = "taking-over"
		next.Takeover = &failoverid.Journal{Epoch: epoch, Reason: reason, Step: failoverid.StepEpochPersisted, Started: time.Now().UTC(), From: from}
		if err := failoverid.SaveState(cfg.DataDir, next); err != nil {
			return fmt.Errorf("persist epoch %d before takeover: %w", epoch, err)
		}
		*st = next
		log.WithFields(logrus.Fields{"epoch": epoch, "reason": reason}).Info("takeover: epoch persisted")
	} else {
		log.WithFields(logrus.Fields{"epoch": st.Takeover.Epoch, "step": st.Takeover.Step}).Warn("takeover: resuming an interrupted takeover")
	}
	j := st.Takeover
	advance := func(step string) error {
		j.Step = step
		if err := failoverid.SaveState(cfg.DataDir, *st); err != nil {
			return fmt.Errorf("takeover journal (%s): %w", step, err)
		}
		log.WithField("step", step).Info("takeover: step done")
		return nil
	}
	at := func(step string) bool { return failoverid.StepIndex(j.Step) < failoverid.StepIndex(step) }

	if at(failoverid.StepBeforeHook) {
		// A failing hook is logged, not fatal: a broken hook must not keep
		// the agents without a server. Without a hook there is nothing to
		// journal (re-running nothing is harmless): skip the fsync.
		if cfg.BeforeHook != "" {
			_ = hooks.Run(ctx, "before_takeover", cfg.BeforeHook, cfg.HookTimeout, HookEnv(cfg.Node, cfg.ID, j), log)
			if err := advance(failoverid.StepBeforeHook); err != nil {
				return err
			}
		} else {
			j.Step = failoverid.StepBeforeHook
		}
	}
	if at(failoverid.StepAgentsRewritten) {
		if cfg.RewriteAgents != nil {
			cfg.RewriteAgents(ctx, j.Epoch)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := advance(failoverid.StepAgentsRewritten); err != nil {
			return err
		}
	}
	if at(failoverid.StepLocationDormant) {
		if err := MakeDormant(cfg.LocationFile); err != nil {
			return err
		}
		if err := advance(failoverid.StepLocationDormant); err != nil {
			return err
		}
	}
	return nil
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
