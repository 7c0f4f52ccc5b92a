package node

import "github.com/tandem-ha/tandem/failoverid"

// Role is what a node is doing now.
type Role int

// The roles of a node. The machine: starting → backup → taking-over →
// primary → fenced, and primary → backup after a planned switchover.
const (
	RoleStarting Role = iota
	RoleBackup
	RoleTakingOver
	RolePrimary
	RoleFenced
)

var roleNames = [...]string{"starting", "backup", "taking-over", "primary", "fenced"}

// String is the role's name in status JSON, state.json and the logs.
func (r Role) String() string {
	if r < 0 || int(r) >= len(roleNames) {
		return "unknown"
	}
	return roleNames[r]
}

// step is what the node does next.
type step int

const (
	stepResumeTakeover step = iota // an interrupted takeover comes first (I7)
	stepBackup                     // watch the primary named in primary_location
	stepPrimary                    // act as primary (claiming, or finishing a takeover)
)

func (s step) String() string {
	return [...]string{"resume-takeover", "backup", "primary"}[s]
}

// nextStep is the node's role machine, without IO: from what state.json
// says and whether DATA/primary_location exists, what the node runs next.
//
//   - a takeover journal before location-dormant resumes the takeover,
//     whatever else is true (the epoch is already claimed);
//   - a journal at location-dormant or later finishes as primary;
//   - otherwise primary_location makes a backup, its absence a primary.
func nextStep(st failoverid.State, hasLocation bool) step {
	if j := st.Takeover; j != nil {
		if failoverid.StepIndex(j.Step) < failoverid.StepIndex(failoverid.StepLocationDormant) {
			return stepResumeTakeover
		}
		return stepPrimary
	}
	if hasLocation {
		return stepBackup
	}
	return stepPrimary
}
