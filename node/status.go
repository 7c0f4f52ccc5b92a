package node

// Status is the JSON object served at GET /status and printed by
// `tandem status --json`. The keys are part of the CLI contract.
type Status struct {
	Node        string `json:"node"`
	Role        string `json:"role"` // primary | backup | taking-over | fenced | starting
	FailoverID  string `json:"failover_id"`
	Epoch       uint64 `json:"epoch"`
	Maintenance bool   `json:"maintenance"`
	// Primary is the primary this backup watches (null on a primary).
	Primary *PrimaryStatus `json:"primary"`
	// BackupConfigured: a backup replied within 2 × reply_period (primary).
	BackupConfigured bool         `json:"backup_configured"`
	Backup           *PeerStatus  `json:"backup,omitempty"`
	Agents           AgentsStatus `json:"agents"`
	Advertise        string       `json:"advertise"`
	Listen           string       `json:"listen"`
	HeartbeatChannel ChannelInfo  `json:"heartbeat_channel"`
	Takeover         *Takeover    `json:"takeover,omitempty"`
	FencedBy         *PeerStatus  `json:"fenced_by,omitempty"`
	// Runbook says what the operator should do next, when anything.
	Runbook string `json:"runbook,omitempty"`
	// Since is when this node took its current role (RFC 3339), and Why
	// is why: "took over from a at epoch 3 (failover): no heartbeat ...".
	Since    string   `json:"since,omitempty"`
	Why      string   `json:"why,omitempty"`
	Warnings []string `json:"warnings"`
	UptimeMS int64    `json:"uptime_ms"`
	// Heartbeat is this node's timing.
	Heartbeat HeartbeatTiming `json:"heartbeat"`
	Version   string          `json:"version"`

	// Groups: this node's configured and effective priority, its health
	// checks, and the group's backups — on a primary those that reply to
	// it (best first), on a backup the other backups it knows of.
	Priority          int           `json:"priority"`
	EffectivePriority int           `json:"effective_priority"`
	Health            string        `json:"health"` // all | one | progressive
	Checks            []CheckStatus `json:"checks"`
	Backups           []GroupMember `json:"backups"`
	// Rank is a backup's place in the election (0: it takes over first);
	// Eligible says whether it may take over automatically, and why not.
	Rank       *int   `json:"rank,omitempty"`
	Ineligible string `json:"ineligible,omitempty"`

	// Arbiter is the group's election in etcd (absent without one).
	Arbiter *ArbiterStatus `json:"arbiter,omitempty"`
}

// CheckStatus is one health check (status JSON "checks").
type CheckStatus struct {
	Name      string `json:"name"`
	Up        bool   `json:"up"`
	Since     string `json:"since"`
	Output    string `json:"output"`
	Failures  int    `json:"failures"`
	Successes int    `json:"successes"`
}

// GroupMember is another server of the group (status JSON "backups").
type GroupMember struct {
	Node              string `json:"node"`
	FailoverID        string `json:"failover_id"`
	Address           string `json:"address,omitempty"`
	Epoch             uint64 `json:"epoch"`
	Priority          int    `json:"priority"`
	EffectivePriority int    `json:"effective_priority"`
	Maintenance       bool   `json:"maintenance"`
	LastReplyAgeMS    int64  `json:"last_reply_age_ms"`
}

// PrimaryStatus is a backup's view of its primary.
type PrimaryStatus struct {
	Node               string `json:"node"`
	FailoverID         string `json:"failover_id"`
	Epoch              uint64 `json:"epoch"`
	Advertise          string `json:"advertise,omitempty"`
	LastHeartbeatAgeMS int64  `json:"last_heartbeat_age_ms"` // -1: never heard
	SilentForMS        int64  `json:"silent_for_ms"`
	// Heard: a valid heartbeat of this primary was counted (now or before a
	// restart); until then this backup never takes over by itself.
	Heard bool `json:"heard"`
	// TakeoverInMS counts down to the automatic takeover while the primary
	// is silent; -1 when none is coming (maintenance, never heard).
	TakeoverInMS int64 `json:"takeover_in_ms"`
	// Maintenance: the primary's heartbeats announce maintenance (set on
	// the primary); the status's own maintenance says whether failover is
	// paused here, whichever node set it.
	Maintenance bool `json:"maintenance"`
	// Priority and EffectivePriority are what its heartbeats say.
	Priority          int `json:"priority"`
	EffectivePriority int `json:"effective_priority"`
}

// PeerStatus names another server.
type PeerStatus struct {
	Node       string `json:"node,omitempty"`
	FailoverID string `json:"failover_id"`
	Epoch      uint64 `json:"epoch"`
	Address    string `json:"address,omitempty"`
	AgeMS      int64  `json:"last_reply_age_ms,omitempty"`
	// Maintenance: the peer says maintenance is on there.
	Maintenance bool `json:"maintenance,omitempty"`
}

// AgentsStatus counts the managed address.yaml files.
type AgentsStatus struct {
	// Managed is how many files the agents globs match.
	Managed int `json:"managed"`
	// Rewritten and Failed count this server's rewrites during its current
	// term as primary (takeover, claim and retries); a backup or fenced
	// server reports 0 for both.
	Rewritten int `json:"rewritten"`
	Failed    int `json:"failed"`
	// Connected counts agents that reported to this primary recently.
	Connected int `json:"connected"`
	// Remote counts the agents of the roster (agents on their own hosts
	// included: every agent the primary heard, as the backup received it)
	// and Bound those of them reporting to this server at its token.
	Remote int `json:"remote"`
	Bound  int `json:"bound"`
	// Tampered counts managed files that claim a token without a valid
	// server signature (failover_sig): they fence nobody.
	Tampered int `json:"tampered,omitempty"`
	// Rewriting shows a rewrite under way (a takeover's, or a claim):
	// how many files are done so far.
	Rewriting *Progress `json:"rewriting,omitempty"`
	// FailedFiles lists up to 20 files that could not be rewritten, with why.
	FailedFiles []FailedFile `json:"failed_files,omitempty"`
}

// FailedFile is one agent file a rewrite could not update.
type FailedFile struct {
	Path  string `json:"path"`
	Error string `json:"error"`
}

// ChannelInfo describes the heartbeat channel link.
type ChannelInfo struct {
	URL       string `json:"url"`
	Connected bool   `json:"connected"`
}

// Takeover describes an in-progress (or just finished) takeover.
type Takeover struct {
	Epoch  uint64 `json:"epoch"`
	Reason string `json:"reason"`
	Step   string `json:"step"`
}

// HeartbeatTiming is the heartbeat configuration, in ms.
type HeartbeatTiming struct {
	PeriodMS      int64 `json:"period_ms"`
	ReplyPeriodMS int64 `json:"reply_period_ms"`
	FailWindowMS  int64 `json:"fail_window_ms"`
}

// Progress is how far a long step is.
type Progress struct {
	Done  int `json:"done"`
	Total int `json:"total"`
}
