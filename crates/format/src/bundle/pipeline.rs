//! Hashing on worker threads, so reading, hashing and decompressing overlap.
//!
//! [`super::read::read_bundle`] decompresses and checks entries on the calling thread. With a
//! second core it moves both sha256 computations off that thread: a *reader* thread reads the
//! compressed file ahead in chunks and hashes it (the bundle's sha256), handing the chunks to
//! the decoder through [`Prefetched`]; a *hasher* thread hashes each payload file's bytes
//! ([`PayloadHasher`]) while the calling thread decompresses the next ones. The decoder sees the
//! same bytes in the same order and each entry's hash is compared before the next entry is
//! read, so every verdict is the one a single thread gives. Channels are bounded and buffers
//! recycled, so memory stays at a few MiB whatever the bundle's size; when the calling thread
//! stops early (a check failed), both workers stop at their next send or receive.

use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

/// Bytes per chunk of compressed input read ahead.
const COMPRESSED_CHUNK: usize = 256 * 1024;
/// Bytes per chunk of payload handed to the hasher.
pub(super) const PAYLOAD_CHUNK: usize = 128 * 1024;
/// Chunks in flight on each channel.
const DEPTH: usize = 4;

/// How [`super::read::read_bundle_on`] spreads its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Worker threads when the machine has a second core, else the calling thread only.
    Auto,
    /// Everything on the calling thread.
    One,
    /// Reader and hasher threads, whatever the number of cores.
    Pipelined,
}

impl Threads {
    /// Whether this choice uses worker threads on this machine.
    pub fn pipelined(self) -> bool {
        match self {
            Threads::One => false,
            Threads::Pipelined => true,
            Threads::Auto => std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
        }
    }
}

/// A recycled buffer of `size` bytes, or a new one.
fn buffer(free: &Receiver<Vec<u8>>, size: usize) -> Vec<u8> {
    match free.try_recv() {
        Ok(mut b) => {
            b.resize(size, 0);
            b
        }
        Err(TryRecvError::Empty | TryRecvError::Disconnected) => vec![0u8; size],
    }
}

/// What the reader thread sends.
enum Compressed {
    Data(Vec<u8>),
    Failed(io::Error),
    /// End of the file: sha256 (hex) and length of everything read.
    End(String, u64),
}

/// Starts the reader thread on `input` inside `scope`; returns the compressed stream it reads
/// ahead.
pub(super) fn prefetch<'scope, R: Read + Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    input: R,
) -> Prefetched {
    let (tx, rx) = sync_channel(DEPTH);
    let (free_tx, free_rx) = sync_channel(DEPTH + 2);
    scope.spawn(move || read_and_hash(input, tx, free_rx));
    Prefetched {
        rx,
        free: free_tx,
        current: Vec::new(),
        pos: 0,
        end: None,
    }
}

/// The reader thread: reads `input` to its end in chunks, hashing every byte.
fn read_and_hash<R: Read>(mut input: R, tx: SyncSender<Compressed>, free: Receiver<Vec<u8>>) {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    loop {
        let mut chunk = buffer(&free, COMPRESSED_CHUNK);
        let mut filled = 0;
        while filled < chunk.len() {
            match input.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if filled > 0 {
                        chunk.truncate(filled);
                        if tx.send(Compressed::Data(chunk)).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Compressed::Failed(e));
                    return;
                }
            }
        }
        if filled == 0 {
            let _ = tx.send(Compressed::End(hex::encode(hasher.finalize()), len));
            return;
        }
        chunk.truncate(filled);
        hasher.update(&chunk);
        len += filled as u64;
        if tx.send(Compressed::Data(chunk)).is_err() {
            return; // the checks stopped
        }
    }
}

/// The compressed input, read ahead and hashed by the reader thread.
pub(super) struct Prefetched {
    rx: Receiver<Compressed>,
    free: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    end: Option<(String, u64)>,
}

impl Prefetched {
    /// sha256 (hex) and length of the whole input, once it has been read to its end.
    pub(super) fn finish(self) -> io::Result<(String, u64)> {
        self.end
            .ok_or_else(|| io::Error::other("the bundle was not read to its end"))
    }
}

impl Read for Prefetched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos == self.current.len() {
            if self.end.is_some() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Compressed::Data(chunk)) => {
                    let used = std::mem::replace(&mut self.current, chunk);
                    let _ = self.free.try_send(used);
                    self.pos = 0;
                }
                Ok(Compressed::Failed(e)) => return Err(e),
                Ok(Compressed::End(sha, len)) => self.end = Some((sha, len)),
                Err(_) => return Err(io::Error::other("the bundle reader thread stopped")),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What the calling thread sends the hasher thread.
pub(super) enum ToHash {
    Data(Vec<u8>),
    /// The current file is complete: answer with its hash and length, then start afresh.
    Finish,
}

/// The sha256 of each payload file in turn, on the calling thread or on a hasher thread.
pub(super) enum PayloadHasher {
    /// Hashing on the calling thread.
    Inline {
        /// The running hash of the current file.
        hasher: Sha256,
        /// Bytes hashed so far.
        len: u64,
        /// The one buffer, reused.
        spare: Vec<u8>,
    },
    /// Hashing on a worker thread.
    Threaded {
        /// Chunks and `Finish` to the hasher.
        tx: SyncSender<ToHash>,
        /// Each file's hash and length back.
        done: Receiver<(String, u64)>,
        /// Buffers the hasher is done with.
        free: Receiver<Vec<u8>>,
    },
}

impl PayloadHasher {
    /// Hashing on the calling thread.
    pub(super) fn inline() -> PayloadHasher {
        PayloadHasher::Inline {
            hasher: Sha256::new(),
            len: 0,
            spare: Vec::new(),
        }
    }

    /// Hashing on a thread started inside `scope`.
    pub(super) fn threaded<'scope>(scope: &'scope std::thread::Scope<'scope, '_>) -> PayloadHasher {
        let (tx, rx) = sync_channel::<ToHash>(DEPTH);
        let (done_tx, done) = sync_channel(1);
        let (free_tx, free) = sync_channel(DEPTH + 2);
        scope.spawn(move || {
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            while let Ok(msg) = rx.recv() {
                match msg {
                    ToHash::Data(chunk) => {
                        hasher.update(&chunk);
                        len += chunk.len() as u64;
                        let _ = free_tx.try_send(chunk);
                    }
                    ToHash::Finish => {
                        let sha = hex::encode(std::mem::take(&mut hasher).finalize());
                        if done_tx.send((sha, std::mem::take(&mut len))).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        PayloadHasher::Threaded { tx, done, free }
    }

    /// A buffer of [`PAYLOAD_CHUNK`] bytes to read the next chunk into.
    pub(super) fn buffer(&mut self) -> Vec<u8> {
        match self {
            PayloadHasher::Inline { spare, .. } => {
                let mut b = std::mem::take(spare);
                b.resize(PAYLOAD_CHUNK, 0);
                b
            }
            PayloadHasher::Threaded { free, .. } => buffer(free, PAYLOAD_CHUNK),
        }
    }

    /// Adds `chunk` (all of it) to the current file's hash.
    pub(super) fn update(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        match self {
            PayloadHasher::Inline {
                hasher, len, spare, ..
            } => {
                hasher.update(&chunk);
                *len += chunk.len() as u64;
                *spare = chunk;
                Ok(())
            }
            PayloadHasher::Threaded { tx, .. } => tx
                .send(ToHash::Data(chunk))
                .map_err(|_| io::Error::other("the payload hasher thread stopped")),
        }
    }

    /// The current file's sha256 (hex) and length; the next file starts afresh.
    pub(super) fn finish(&mut self) -> io::Result<(String, u64)> {
        match self {
            PayloadHasher::Inline { hasher, len, .. } => Ok((
                hex::encode(std::mem::take(hasher).finalize()),
                std::mem::take(len),
            )),
            PayloadHasher::Threaded { tx, done, .. } => {
                let stopped = || io::Error::other("the payload hasher thread stopped");
                tx.send(ToHash::Finish).map_err(|_| stopped())?;
                done.recv().map_err(|_| stopped())
            }
        }
    }
}
