// Package broker is everything STOMP in tandem: a small publish/subscribe
// seam (Bus, Subscription), an in-memory implementation for unit tests
// (MemHub, with partition, drop and disconnect hooks), the embedded broker
// every server runs (Server) and the client link to any STOMP broker (Link).
//
// # The embedded broker and what is wrapped around go-stomp
//
// go-stomp v3's server package has traps a failover service cannot live with:
// Serve never returns and leaves open connections up when its listener
// closes; one goroutine routes every destination and blocks on a client's
// 16-frame write queue, so one frozen client stalls the heartbeat topic for
// everyone (and publishers behind it); a disconnecting client can deadlock
// that goroutine when more than 16 messages for it are queued ahead of its
// UNSUBSCRIBE; frame size is unbounded (content-length is allocated as sent);
// ack:client panics it; its heart-beat minimum defaults to a minute.
//
// Server therefore keeps go-stomp's per-connection protocol state machine
// (server/client.Conn: CONNECT negotiation, heart-beats, validation, SEND,
// SUBSCRIBE, transactions) and replaces the rest:
//
//   - its own accept loop, connection tracking and Close, which closes every
//     connection and waits (bounded) for every goroutine: nothing is left
//     running after Close (go-stomp's Serve is not used at all);
//   - its own router: every destination is a topic, fan-out never blocks.
//     Each connection gets a bounded backlog and a pump goroutine that hands
//     messages to go-stomp with flow control (at most maxInFlight in its
//     16-frame queue), so only the pump of a slow client waits;
//   - a net.Conn wrapper per connection: writes carry a deadline
//     (WriteTimeout), a backlog over MaxPendingBytes or a timed-out write
//     drops the client (counted as SlowClients); reads pass through a frame
//     guard that refuses a frame over MaxFrameSize before go-stomp would
//     allocate it (an ERROR frame is sent, the client disconnected); a
//     connection that sends no frame within ConnectTimeout is closed;
//   - MaxConns, constant-time login/passcode check with counted and logged
//     failures (never the passcode), optional TLS, logrus logs.
//
// Each connection runs four goroutines: go-stomp's read and process loops and
// the broker's forward and pump. All of them, and the accept loop, end by
// the time Close returns (Close gives up after 5 s and says so, which the
// tests would catch).
//
// go-stomp's per-connection loops have one more trap: the read loop blocks
// on a 16-frame queue that nobody drains once the process loop has returned.
// The wrapper keeps the process loop running until the socket is closed
// (write failures are absorbed, not returned) and hands go-stomp nothing
// but the CONNECT frame until CONNECT is accepted, so neither a slow client
// nor a failed login leaves a goroutine behind. One case remains: an
// authenticated client that sends an invalid frame followed by 16 more
// before go-stomp rejects it leaves go-stomp's read loop (and those frames)
// behind until the process exits.
//
// The process that embeds a Server reaches it in memory (Server.Local): a
// Bus whose publishes are routed as a client's SEND and whose subscriptions
// take the router's messages as they are, with no frame encoded or parsed.
// A primary's link to its own broker is one: the status reports of a
// fleet's agents reach it without a second trip through STOMP.
//
// go-stomp's server never sends RECEIPT for SUBSCRIBE or UNSUBSCRIBE (it does
// for SEND, DISCONNECT and transactions); clients must not wait for those.
//
// Queues (go-stomp's /queue/ prefix) are not supported: tandem uses topics,
// and every destination is a topic. Acknowledgement modes other than auto are
// accepted but meaningless (topic messages are never redelivered).
//
// # Link
//
// go-stomp's client neither reconnects nor resubscribes, and a slow reader
// of Subscription.C stops its whole connection. Link keeps one connection up
// in the background (jittered exponential backoff), resubscribes after every
// reconnect, drains each go-stomp subscription in its own goroutine into a
// bounded drop-oldest buffer, notices a dead broker from the socket and a
// frozen one from heart-beats, and never waits on the UNSUBSCRIBE receipt
// the embedded broker does not send.
package broker
