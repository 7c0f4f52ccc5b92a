// Package demo holds tandem's demonstrations and the checks that keep them
// honest: run.sh (`make demo`: a primary, a backup and three agents on the
// embedded broker, with a failover; ACTIVEMQ=1 puts the heartbeat channel on
// a private ActiveMQ), docker-compose.yml with ActiveMQ Classic, and
// runbook_check.sh, which runs every procedure of docs/runbook.md against
// real processes. Its tests check the compose file's wiring without a Docker
// engine and run the runbook check (skipped with -short).
package demo
