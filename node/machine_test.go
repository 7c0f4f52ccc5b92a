package node

import (
	"testing"

	"github.com/tandem-ha/tandem/failoverid"
)

func TestNextStep(t *testing.T) {
	j := func(step string) *failoverid.Journal { return &failoverid.Journal{Epoch: 3, Step: step} }
	cases := []struct {
		name        string
		st          failoverid.State
		hasLocation bool
		want        step
	}{
		{"fresh server without primary_location", failoverid.State{}, false, stepPrimary},
		{"fresh backup", failoverid.State{}, true, stepBackup},
		{"primary restarting", failoverid.State{Epoch: 4, Role: "primary"}, false, stepPrimary},
		{"backup restarting", failoverid.State{Epoch: 4, Role: "backup"}, true, stepBackup},
		{"crash after the epoch was persisted", failoverid.State{Epoch: 3, Takeover: j(failoverid.StepEpochPersisted)}, true, stepResumeTakeover},
		{"crash after the hook", failoverid.State{Epoch: 3, Takeover: j(failoverid.StepBeforeHook)}, true, stepResumeTakeover},
		{"crash after the rewrite", failoverid.State{Epoch: 3, Takeover: j(failoverid.StepAgentsRewritten)}, true, stepResumeTakeover},
		// The rename happened but was not journaled: primary_location is
		// gone, the journal still says agents-rewritten: resume.
		{"crash after the rename", failoverid.State{Epoch: 3, Takeover: j(failoverid.StepAgentsRewritten)}, false, stepResumeTakeover},
		{"crash after location-dormant", failoverid.State{Epoch: 3, Takeover: j(failoverid.StepLocationDormant)}, false, stepPrimary},
		{"crash during after_takeover", failoverid.State{Epoch: 3, Takeover: j(failoverid.StepPrimaryHeartbeat)}, false, stepPrimary},
	}
	for _, c := range cases {
		if got := nextStep(c.st, c.hasLocation); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

func TestRoleNames(t *testing.T) {
	for r, want := range map[Role]string{RoleStarting: "starting", RoleBackup: "backup", RoleTakingOver: "taking-over", RolePrimary: "primary", RoleFenced: "fenced", Role(42): "unknown"} {
		if r.String() != want {
			t.Errorf("%d: %q, want %q", int(r), r.String(), want)
		}
	}
}
