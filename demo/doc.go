// Package demo holds tandem's demonstrations: run.sh (`make demo`, a primary,
// a backup and three agents on the embedded broker, with a failover), and
// docker-compose.yml with ActiveMQ Classic carrying the heartbeat channel.
// Its test checks the compose file's wiring without a Docker engine.
package demo
