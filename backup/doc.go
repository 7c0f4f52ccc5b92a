// Package backup is the backup role. Its core is Detector, a pure failure
// detector (heartbeats and clock readings in, decisions out). Role is the
// thin driver: it owns the timers and the subscription, replies to the
// primary so the primary knows failover is enabled, and returns when a
// takeover is decided. Takeover then runs the journaled takeover procedure,
// step by step, so that a crash at any point resumes on restart.
package backup
