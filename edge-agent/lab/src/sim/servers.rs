//! Virtual serial devices: an NE-1000 pump and a Modbus RTU PID controller served on the master
//! side of pseudo-terminals, with fault injection (mute, garbage, close mid-command).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialStream;

use super::controller::ControllerFace;
use super::world::World;
use crate::clock::Clock;

/// Faults a test can inject into a virtual serial device.
#[derive(Debug, Default)]
pub struct PortFaults {
    /// Read commands but never answer.
    pub mute: AtomicBool,
    /// Close the port after reading the next command, without answering.
    pub close_on_next: AtomicBool,
    /// Bytes received so far.
    pub bytes_received: AtomicU64,
}

/// Lock the world, tolerating a poisoned mutex (a panicked holder left consistent-enough state).
pub fn lock(world: &Mutex<World>) -> std::sync::MutexGuard<'_, World> {
    match world.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Serve the pumps `symbols` (one, or a network of several addresses) on `master` until the port
/// closes. Each command goes to the pump whose address it carries; the others stay silent.
///
/// Basic-mode pumps answer CR-terminated lines; Safe-mode pumps answer only length- and
/// CRC-checked packets (a bad one is dropped, as is a packet whose bytes pause for 0.5 s), in
/// packets. A Safe-mode pump's communications time-out runs from its last valid packet and is
/// counted in wall seconds, like the link it watches (lab time at 1000x would turn a scheduler
/// hiccup into minutes of silence); on expiry the pump stops with a `?T` alarm. In Safe mode an
/// alarm is also sent unasked (the manuals' Auto-Alarm) and reported again in the next reply.
pub async fn serve_pump(
    mut master: SerialStream,
    symbols: Vec<String>,
    world: Arc<Mutex<World>>,
    clock: Clock,
    faults: Arc<PortFaults>,
) {
    use crate::ne1000::{SafeEnvelope, STX};
    use std::collections::BTreeMap;
    use std::time::Instant;

    const INTER_BYTE: Duration = Duration::from_millis(500);
    let mut buf: Vec<u8> = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    let mut last_byte = Instant::now();
    // Safe-mode pumps whose time-out runs: since their last valid packet
    let mut last_valid: BTreeMap<String, Instant> = BTreeMap::new();
    // alarms already sent unasked
    let mut announced: BTreeMap<String, &'static str> = BTreeMap::new();
    loop {
        let mut out: Vec<u8> = Vec::new();
        tokio::select! {
            r = master.read(&mut chunk) => {
                let n = match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                faults.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                if !buf.is_empty() && last_byte.elapsed() >= INTER_BYTE && buf[0] == STX {
                    buf.clear(); // an incomplete packet timed out
                }
                last_byte = Instant::now();
                buf.extend_from_slice(&chunk[..n]);
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        // one request at a time: a Safe packet (from STX) or a basic line (to CR/LF)
        loop {
            let stx = buf.iter().position(|&c| c == STX);
            let eol = buf.iter().position(|&c| c == b'\r' || c == b'\n');
            let (safe, request): (bool, Vec<u8>) = match (stx, eol) {
                (Some(i), e) if e.is_none_or(|e| i < e) => {
                    buf.drain(..i);
                    match crate::ne1000::safe_envelope(&buf) {
                        SafeEnvelope::Incomplete => break,
                        SafeEnvelope::NotSafe => {
                            buf.drain(..1);
                            continue;
                        }
                        SafeEnvelope::Corrupt => {
                            // dropped whole when its length arrived, else from this STX
                            let len = usize::from(buf[1]);
                            buf.drain(..(1 + len).min(buf.len()));
                            continue;
                        }
                        SafeEnvelope::Packet { total } => {
                            let packet: Vec<u8> = buf.drain(..total).collect();
                            (true, packet[2..total - 3].to_vec())
                        }
                    }
                }
                (_, Some(e)) => {
                    let mut line: Vec<u8> = buf.drain(..=e).collect();
                    line.pop();
                    if line.is_empty() {
                        continue;
                    }
                    (false, line)
                }
                _ => break,
            };
            if faults.close_on_next.swap(false, Ordering::SeqCst) {
                return;
            }
            let reply = {
                let mut w = lock(&world);
                w.advance_to(clock.now_s());
                symbols.iter().find_map(|s| {
                    let p = w.pumps.get_mut(s)?;
                    // a pump listens only in the protocol it is in
                    if safe != (p.safe_timeout_s > 0) {
                        return None;
                    }
                    let r = p.handle(&request)?;
                    // a valid packet restarts the time-out (SAF n switches it on, SAF0 off)
                    if p.safe_timeout_s > 0 {
                        last_valid.insert(s.clone(), Instant::now());
                    } else {
                        last_valid.remove(s);
                    }
                    // the reply to SAF comes in the protocol the pump is in now
                    Some(if p.safe_timeout_s > 0 {
                        r.encode_safe()
                    } else {
                        r.encode()
                    })
                })
            };
            if faults.mute.load(Ordering::Relaxed) {
                continue;
            }
            if let Some(r) = reply {
                out.extend_from_slice(&r);
            }
        }
        if buf.len() > 128 {
            buf.clear();
        }
        // Safe mode: the communications time-out, and alarms sent unasked
        {
            let mut w = lock(&world);
            w.advance_to(clock.now_s());
            for s in &symbols {
                let Some(p) = w.pumps.get_mut(s) else {
                    continue;
                };
                if p.safe_timeout_s == 0 {
                    continue;
                }
                let timeout = Duration::from_secs(u64::from(p.safe_timeout_s));
                if last_valid.get(s).is_some_and(|t| t.elapsed() >= timeout) {
                    // the timer stays off until the next valid packet
                    last_valid.remove(s);
                    p.comms_timed_out();
                }
                match p.alarm {
                    Some(a) if announced.get(s) != Some(&a) => {
                        announced.insert(s.clone(), a);
                        let r = crate::ne1000::Reply {
                            address: p.address,
                            state: crate::ne1000::PumpState::Alarm,
                            data: a.to_string(),
                        };
                        if !faults.mute.load(Ordering::Relaxed) {
                            out.extend_from_slice(&r.encode_safe());
                        }
                    }
                    Some(_) => {}
                    None => {
                        announced.remove(s);
                    }
                }
            }
        }
        if !out.is_empty() && master.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// CRC-16/MODBUS.
pub const MODBUS_CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);

/// Append the Modbus CRC (low byte first).
pub fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let c = MODBUS_CRC.checksum(&frame);
    frame.extend_from_slice(&c.to_le_bytes());
    frame
}

/// Length of the request frame starting at `b[0]` if it can be known yet.
fn request_len(b: &[u8]) -> Option<Option<usize>> {
    if b.len() < 2 {
        return Some(None);
    }
    match b[1] {
        0x03 | 0x04 | 0x06 => Some(Some(8)),
        0x10 => {
            if b.len() < 7 {
                Some(None)
            } else {
                Some(Some(9 + usize::from(b[6])))
            }
        }
        _ => None, // unknown function: not a frame start
    }
}

/// Answer one complete, CRC-checked request through the controller's face. `None`: not for us.
fn modbus_answer(
    w: &mut World,
    face: &mut ControllerFace,
    slave: u8,
    req: &[u8],
) -> Option<Vec<u8>> {
    if req[0] != slave {
        return None;
    }
    let fc = req[1];
    let be = |i: usize| u16::from_be_bytes([req[i], req[i + 1]]);
    let exception = |code: u8| with_crc(vec![slave, fc | 0x80, code]);
    let out = match fc {
        0x03 | 0x04 => {
            let (addr, count) = (be(2), be(4));
            if count == 0 || count > 125 {
                return Some(exception(3));
            }
            let mut v = vec![slave, fc, (count * 2) as u8];
            for a in addr..addr.saturating_add(count) {
                match face.read(&w.heater, fc, a) {
                    Ok(x) => v.extend_from_slice(&x.to_be_bytes()),
                    Err(code) => return Some(exception(code)),
                }
            }
            with_crc(v)
        }
        0x06 => {
            let (addr, value) = (be(2), be(4));
            if let Err(code) = face.write_single(&mut w.heater, addr, value) {
                return Some(exception(code));
            }
            with_crc(req[..6].to_vec())
        }
        0x10 => {
            let (addr, count) = (be(2), be(4));
            if usize::from(req[6]) != usize::from(count) * 2 {
                return Some(exception(3));
            }
            let values: Vec<u16> = (0..usize::from(count)).map(|i| be(7 + 2 * i)).collect();
            if let Err(code) = face.write_multiple(&mut w.heater, addr, &values) {
                return Some(exception(code));
            }
            with_crc(req[..6].to_vec())
        }
        _ => exception(1),
    };
    Some(out)
}

/// Serve the PID controller (Modbus RTU slave `slave`, registers as `face`) on `master` until
/// the port closes.
pub async fn serve_pid(
    mut master: SerialStream,
    slave: u8,
    mut face: ControllerFace,
    world: Arc<Mutex<World>>,
    clock: Clock,
    faults: Arc<PortFaults>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        // RTU frames are delimited by silence: an incomplete frame older than 20 ms is dropped.
        let read = tokio::time::timeout(Duration::from_millis(20), master.read(&mut chunk)).await;
        let n = match read {
            Err(_) => {
                buf.clear();
                continue;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        faults.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let len = match request_len(&buf) {
                None => {
                    buf.remove(0);
                    continue;
                }
                Some(None) => break,
                Some(Some(l)) => l,
            };
            if buf.len() < len {
                break;
            }
            let frame = &buf[..len];
            if MODBUS_CRC.checksum(&frame[..len - 2]).to_le_bytes()
                != [frame[len - 2], frame[len - 1]]
            {
                buf.remove(0);
                continue;
            }
            let frame: Vec<u8> = buf.drain(..len).collect();
            if faults.close_on_next.swap(false, Ordering::SeqCst) {
                return;
            }
            let answer = {
                let mut w = lock(&world);
                w.advance_to(clock.now_s());
                modbus_answer(&mut w, &mut face, slave, &frame)
            };
            if faults.mute.load(Ordering::Relaxed) {
                continue;
            }
            if let Some(a) = answer {
                if master.write_all(&a).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Serve the inline optical bench (lamp, flow cell and a 2,048-pixel CCD spectrometer) on
/// `master` with a line protocol, the way a vendor SDK sees the hardware: raw counts, not
/// absorbance. One request per line, one reply line each:
///
/// - `ID?` → `MAOSIC-BENCH 2048 200 1100` (model, pixels, first and last wavelength, nm)
/// - `WL?` → the 2,048 pixel wavelengths, nm, space-separated
/// - `LAMP 1` / `LAMP 0` → `OK` (light source shutter open / closed, for dark spectra)
/// - `ACQ <integration_ms> <averages>` → after that much lab time (on the event clock: at once,
///   the agent counting the exposure), `DATA` and the counts
/// - anything else → `ERR <reason>`
///
/// The light passes through the stream at the flow cell as the world holds it when the
/// acquisition ends.
pub async fn serve_bench(
    mut master: SerialStream,
    world: Arc<Mutex<World>>,
    clock: Clock,
    faults: Arc<PortFaults>,
) {
    use std::fmt::Write as _;
    let mut buf: Vec<u8> = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    let mut lamp_on = true;
    loop {
        let n = match master.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        faults.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line).trim().to_string();
            if line.is_empty() {
                continue;
            }
            if faults.close_on_next.swap(false, Ordering::SeqCst) {
                return;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let reply = match words.as_slice() {
                ["ID?"] => format!(
                    "MAOSIC-BENCH {} {} {}",
                    super::optics::PIXELS,
                    super::optics::WL_MIN,
                    super::optics::WL_MAX
                ),
                ["WL?"] => {
                    let mut s = String::with_capacity(super::optics::PIXELS * 9);
                    for i in 0..super::optics::PIXELS {
                        let _ = write!(s, "{:.4} ", super::optics::pixel_nm(i));
                    }
                    s.trim_end().to_string()
                }
                ["LAMP", "1"] => {
                    lamp_on = true;
                    "OK".into()
                }
                ["LAMP", "0"] => {
                    lamp_on = false;
                    "OK".into()
                }
                ["ACQ", ms, avg] => match (ms.parse::<f64>(), avg.parse::<u32>()) {
                    (Ok(ms), Ok(avg))
                        if (1.0..=10_000.0).contains(&ms) && (1..=100).contains(&avg) =>
                    {
                        // on the scaled clock the exposure takes its time here; on the event
                        // clock the agent counts it (the driver reports `lab_duration_s`)
                        if !clock.is_event() {
                            clock
                                .sleep(Duration::from_secs_f64(ms * f64::from(avg) / 1000.0))
                                .await;
                        }
                        let counts = {
                            let mut w = lock(&world);
                            w.advance_to(clock.now_s());
                            let s = w.stream();
                            super::optics::detector_counts(&s, lamp_on, ms, avg, &mut w.rng.spectra)
                        };
                        let mut s = String::with_capacity(counts.len() * 8 + 5);
                        s.push_str("DATA");
                        for c in counts {
                            let _ = write!(s, " {c:.1}");
                        }
                        s
                    }
                    _ => "ERR integration 1-10000 ms, averages 1-100".into(),
                },
                _ => format!("ERR unknown command {:?}", words.first().unwrap_or(&"")),
            };
            if faults.mute.load(Ordering::Relaxed) {
                continue;
            }
            let mut out = reply.into_bytes();
            out.push(b'\n');
            if master.write_all(&out).await.is_err() {
                return;
            }
        }
        if buf.len() > 256 {
            buf.clear();
        }
    }
}
