// Package failoverid owns a tandem server's identity and fencing state.
//
// Two things identify and order a server's authority:
//
//   - the failover id, a UUID kept in DATA/failover_id, names a server. It is
//     created once on first start and never replaced except on an explicit
//     request (`tandem id --regenerate`). It lets an agent tell two servers
//     apart, as OpsCenter's failover_id does;
//   - the epoch, a uint64 kept in DATA/state.json, orders them. A backup that
//     takes over persists epoch = max(own, highest seen) + 1 before it touches
//     any agent file.
//
// Together they form a Token. What tandem guarantees with it:
//
//   - An epoch never goes down on disk: state.json is written atomically and
//     durably (temp file, fsync, rename, fsync of the directory), and a
//     corrupt or unreadable state file stops the server instead of being
//     reset to zero.
//   - An agent's address.yaml is only rewritten to a higher epoch (compare
//     and swap under a file lock, see package agentcfg), so an agent is bound
//     to at most one (failover id, epoch) at a time and acts only on messages
//     carrying exactly that token.
//   - A server that sees a higher epoch than its own stops acting as primary.
//
// What it does not guarantee: it is not a consensus protocol. Two servers cut
// off from each other and from the agents' files can both believe they are
// primary; fencing takes effect where the token is checked — in the agent and
// in the address.yaml compare-and-swap — not in the network. An agent that
// cannot read its file keeps its last binding. Clocks play no part: epochs are
// counters, not times.
package failoverid
