// Package integration holds end-to-end tests that run real tandem
// processes on loopback: servers, agents and brokers, with faults injected by
// signals (kill -9, SIGSTOP/SIGCONT) and by restarting processes. Every
// process a test starts is stopped by PID in the test's cleanup; every wait
// polls with a deadline.
package integration
