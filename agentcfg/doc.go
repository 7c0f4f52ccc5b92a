// Package agentcfg owns the agents' address.yaml files: it reads and
// validates them, edits them without losing a byte of what it does not own,
// writes them atomically and durably, rewrites them under an epoch
// compare-and-swap, expands the managed globs and watches a file for changes.
//
// # The file
//
// address.yaml is a YAML mapping. agentcfg reads stomp_interface (a host
// name or IP address, required), stomp_port (1-65535, default DefaultPort),
// use_ssl (0, 1, true or false) and tandem's fencing keys failover_id (a
// canonical UUID) and failover_epoch (an unsigned integer), the server's
// failover_sig over them, and failover_servers ("HOST:PORT,HOST:PORT", the
// group's other servers, where the agent keeps standby subscriptions; at
// most 16, 1 KiB). Numbers may be plain or quoted. An owned key may appear
// only once; other keys are never interpreted. The token rewrites never
// touch failover_servers, and SetFailoverServers (the agent learning its
// primary's group) never touches the token.
//
// # Editing
//
// Edit is a text edit guided by the parser's node positions, never a
// re-marshal: only the bytes of a value that changes are replaced (a quoted
// value stays quoted), missing keys are appended, and every other byte —
// other keys, their order, comments, blank lines, CRLF line endings — is
// kept. Setting values that are already equal leaves the bytes identical.
// Every edit is parsed again before it is used: if the result does not read
// back as exactly the requested values with every other key unchanged, Edit
// returns an error and nothing is written.
//
// # Guarantees of a rewrite
//
//   - Atomic: new content goes to a temporary file in the same directory and
//     is renamed over the file. A reader, or a crash (kill -9, power cut) at
//     any moment, sees the whole old file or the whole new one, never a mix.
//     A symbolic link is kept and its target replaced; the mode is kept, and
//     the owner when that owner also owns the directory (see below).
//   - Durable: a Result says Rewritten only once the new content and the
//     rename are on stable storage.
//   - Compare-and-swap: a file is rewritten only if its failover_epoch is
//     lower than the update's epoch (an absent epoch counts as 0). Read,
//     compare and rename happen under an exclusive flock(2) on a lock file
//     beside it, ".NAME.lock" (kept, never deleted), so concurrent writers —
//     goroutines or processes — never lose an update and never lower an
//     epoch: the epoch only goes up. An equal epoch is left alone, even if
//     other values differ.
//   - Force skips the comparison: it rewrites whatever the epoch, so it may
//     lower it. It still never touches a file it cannot parse.
//   - A file that cannot be parsed or edited is reported Invalid and left
//     byte-identical; RewriteAll never stops at a bad file.
//
// # Hostile files
//
// An agent's owner can write the directory holding its address.yaml, so
// every file there is hostile input. Reads (ReadFile, ReadFileWith) and
// rewrites open the directory as a handle and do everything relative to it
// (internal/fsutil.Dir): swapping the directory afterwards changes nothing.
// On the way to the directory a symbolic link is followed only if the
// directory holding it is writable by root or tandem's user alone. In the
// directory:
//
//   - address.yaml may be a symbolic link only to a file beneath the same
//     directory (relative, never climbing above it); any other link is
//     Failed, ErrSymlinkEscapes ("symlink leaves the agent directory").
//   - It is opened O_NOFOLLOW|O_NONBLOCK and must be a regular file (fstat
//     after the open): a FIFO, directory, socket or device is Failed,
//     ErrNotRegular, without blocking.
//   - At most MaxFileSize bytes are read (max_agent_file_size, default
//     1 MiB), checked before parsing: a bigger file is Invalid, ErrTooLarge.
//     Files over 64 KiB are parsed one at a time.
//   - The lock file is created with O_CREAT|O_EXCL|O_NOFOLLOW or opened
//     O_NOFOLLOW and must be a regular file. The wait for it is bounded
//     (LockTimeout, default 5 s): a file whose lock stays held is Failed,
//     ErrLockTimeout, the batch goes on, the caller retries later.
//   - The temporary file is created O_EXCL|O_NOFOLLOW and renamed relative
//     to the handle. It gets the old file's owner only when that owner also
//     owns the directory; otherwise it stays tandem's user's (no chown).
//
// Every such error is one line naming the file and what was expected.
//
// The lock only orders writers that use it (tandem's). An editor that
// rewrites the file by hand is not fenced out, but its result is still
// compare-and-swapped against by the next tandem writer.
//
// # Batches and durability
//
// CompareAndSwap writes one file with an fsync of the file and of its
// directory. Doing that for 10,000 agents costs two fsyncs per file, so
// RewriteAll batches durability without weakening it:
//
//  1. Each worker locks a group of up to 256 files (GroupSize; bounded by the
//     open-file limit). It waits (at most LockTimeout) only for the first lock
//     of a group and merely tries the others, so no worker ever waits while holding a lock: groups cannot
//     deadlock with each other, with other processes, or with a file listed
//     twice.
//  2. Under the locks it reads, compares and edits each file and stages the
//     new content in a temporary file beside it, without fsync.
//  3. It waits for one syncfs(2) of the file system that started after its
//     staging (group commit: one syncfs serves every worker waiting for it),
//     so the staged data is on disk before any rename.
//  4. It renames the temporaries over the targets and unlocks.
//  5. After all groups, one more syncfs makes the renames durable; only then
//     are results marked Rewritten. A failed sync marks them Failed (before
//     the renames the files stay untouched; after them the result says the
//     new content is not confirmed durable).
//
// The file system is opened before the batch writes anything on it, because
// Linux reports a writeback error to syncfs only through descriptors opened
// before the error; a sync error fails the rest of the batch. Because data is
// durable before any rename, a power cut leaves every file either old or new,
// never a renamed empty file. syncfs flushes the whole file system, so on a
// host with a lot of unrelated dirty data a batch is slower, never wrong.
// Outside Linux the flush is sync(2).
//
// A Flusher does the same for single-file rewrites that come together but
// not as one batch: a fleet of agents, each compare-and-swapping its own
// file after one broadcast rebind. Each rewrite stages without fsync,
// waits for a syncfs that started after that, renames, and waits for one
// more; one syncfs serves every rewrite waiting for it. A sync error fails
// the rewrites that were under way when it was seen (their mark), not the
// later ones: a long-lived process recovers with its file system.
//
// # Watching
//
// Watch watches the directory rather than the file, so it follows the
// rename-over that every writer here uses and survives delete-and-recreate.
// When inotify is exhausted it falls back to polling. WatchMux shares one
// inotify instance between many files.
package agentcfg
