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
pub async fn serve_pump(
    mut master: SerialStream,
    symbols: Vec<String>,
    world: Arc<Mutex<World>>,
    clock: Clock,
    faults: Arc<PortFaults>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        let n = match master.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        faults.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|&c| c == b'\r' || c == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = &line[..line.len() - 1];
            if line.is_empty() {
                continue;
            }
            if faults.close_on_next.swap(false, Ordering::SeqCst) {
                return;
            }
            let reply = {
                let mut w = lock(&world);
                w.advance_to(clock.now_s());
                symbols
                    .iter()
                    .find_map(|s| w.pumps.get_mut(s).and_then(|p| p.handle(line)))
            };
            if faults.mute.load(Ordering::Relaxed) {
                continue;
            }
            if let Some(r) = reply {
                if master.write_all(&r.encode()).await.is_err() {
                    return;
                }
            }
        }
        if buf.len() > 128 {
            buf.clear();
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
