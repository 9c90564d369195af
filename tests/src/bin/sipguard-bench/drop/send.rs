//! The paced sender: SIP REGISTERs from banned sources, in turn, through an
//! AF_PACKET socket on the client's veth, from a thread pinned to the
//! sender's CPU.
use super::{cpu, BATCH, FLOOD, MAX_PACKETS, OFFERED_PPS, SENDER_CPU};
use anyhow::{Context as _, Result};
use sipguard_tests::{
    netns::{self, Netns, SERVER_V4},
    packet::routable_udp4,
};
use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Distinct REGISTERs built beforehand; a source past these sends one of
/// them with its own address written in (a million frames would be 600 MB).
const TEMPLATES: usize = 4096;
/// Room for a frame.
const FRAME_MAX: usize = 1536;

/// Banned source number `i`: 100.64.0.0 + i.
pub fn source(i: u32) -> [u8; 4] {
    (0x6440_0000u32 + i).to_be_bytes()
}

/// The frames of sources `0..sources`, up to `TEMPLATES` of them.
pub fn templates(macs: ([u8; 6], [u8; 6]), sources: u32) -> Result<Vec<Vec<u8>>> {
    let server: [u8; 4] = SERVER_V4.parse::<std::net::Ipv4Addr>()?.octets();
    Ok((0..sources.min(TEMPLATES as u32))
        .map(|i| routable_udp4(macs, source(i), server, 5060, &register(i as usize)))
        .collect())
}

/// Writes `src` into an IPv4 frame's source address, with the header's
/// checksum (the UDP checksum is 0: none).
fn set_source(frame: &mut [u8], src: [u8; 4]) {
    frame[26..30].copy_from_slice(&src);
    frame[24..26].copy_from_slice(&[0, 0]);
    let sum = frame[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    frame[24..26].copy_from_slice(&(!(folded as u16)).to_be_bytes());
}

/// Floods from sources `0..sources` in turn (frames from `templates`) out
/// of `iface` in `ns`, for `FLOOD` or `MAX_PACKETS`; returns packets sent
/// and seconds.
pub fn flood(ns: &Netns, iface: &str, templates: &[Vec<u8>], sources: u32) -> Result<(u64, f64)> {
    let sent = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let path = ns.path();
    let secs = std::thread::scope(|scope| -> Result<f64> {
        let sender = scope.spawn(|| -> Result<()> {
            netns::enter(&path)?;
            cpu::set_affinity(0, SENDER_CPU)?;
            let sock = netns::RawSocket::bind(iface)?;
            // One buffer per message of a batch, refilled before each call
            // (the kernel has copied the frames when sendmmsg returns).
            let mut bufs = vec![[0u8; FRAME_MAX]; BATCH];
            let mut iovs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
            // SAFETY: all-zero is a valid, empty msghdr.
            let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
            let mut due = Instant::now();
            let mut total = 0u64;
            // Each batch's gap is 0.5–1.5× the mean, at random: no pacing
            // pattern for anything periodic on the receiver to lock onto.
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
            let mut jitter = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                0.5 + (rng >> 11) as f64 / (1u64 << 53) as f64
            };
            while !stop.load(Ordering::Relaxed) && total < MAX_PACKETS {
                iovs.clear();
                for (b, buf) in bufs.iter_mut().enumerate() {
                    let s = ((total + b as u64) % u64::from(sources)) as usize;
                    let t = &templates[s % templates.len()];
                    buf[..t.len()].copy_from_slice(t);
                    if s >= templates.len() {
                        set_source(&mut buf[..t.len()], source(s as u32));
                    }
                    iovs.push(libc::iovec {
                        iov_base: buf.as_mut_ptr().cast(),
                        iov_len: t.len(),
                    });
                }
                for (msg, iov) in msgs.iter_mut().zip(&mut iovs) {
                    msg.msg_hdr.msg_iov = iov;
                    msg.msg_hdr.msg_iovlen = 1;
                }
                // Paced: wait (spinning, on the sender's own CPU) until this
                // batch is due.
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                // SAFETY: BATCH valid messages, each pointing at a filled
                // buffer.
                let n = unsafe { libc::sendmmsg(sock.fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOBUFS) {
                        continue;
                    }
                    return Err(e).context("sendmmsg");
                }
                total += n as u64;
                due += Duration::from_secs_f64(n as f64 / OFFERED_PPS * jitter());
                sent.store(total, Ordering::Relaxed);
            }
            Ok(())
        });
        let start = Instant::now();
        while start.elapsed() < FLOOD && !sender.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        sender.join().expect("sender thread")?;
        Ok(secs)
    })?;
    Ok((sent.load(Ordering::Relaxed), secs))
}

/// A REGISTER of a realistic size, different per source.
fn register(i: usize) -> Vec<u8> {
    format!(
        "REGISTER sip:{SERVER_V4} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 100.64.0.1:5060;branch=z9hG4bK-{i:08};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{i}@{SERVER_V4}>;tag=a73kszlfl{i:08}\r\n\
         To: <sip:{i}@{SERVER_V4}>\r\n\
         Call-ID: 1j9FpLxk3uxtm8tn@100.64.0.1-{i:08}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{i}@100.64.0.1:5060>\r\n\
         User-Agent: Grandstream GXP2170 1.0.11.3\r\n\
         Authorization: Digest username=\"{i}\", realm=\"{SERVER_V4}\", nonce=\"1f6c3e9a\", uri=\"sip:{SERVER_V4}\", response=\"0123456789abcdef0123456789abcdef\"\r\n\
         Expires: 3600\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

pub fn frame_len() -> usize {
    routable_udp4(([0; 6], [0; 6]), [0; 4], [0; 4], 5060, &register(0)).len()
}
