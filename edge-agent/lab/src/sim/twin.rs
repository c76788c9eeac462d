//! Starts the twin's serial devices on their own thread and runtime (the "hardware" keeps running
//! when the agent's runtime stalls), each on a fresh pseudo-terminal.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::controller::ControllerFace;
use super::servers::{serve_bench, serve_pid, serve_pump, PortFaults};
use super::world::World;
use crate::clock::Clock;
use crate::drivers::profiles::ControllerProfile;

/// Which protocol a twin port serves.
#[derive(Debug, Clone)]
pub enum TwinPortKind {
    /// NE-1000 pump with its symbol (key in `World::pumps`).
    Pump,
    /// Several NE-1000 pumps (keys in `World::pumps`, each with its own address) on one port.
    PumpNetwork(Vec<String>),
    /// Modbus RTU PID controller with this slave id, showing the registers of `profile` with
    /// `decimals` implied decimals.
    Pid {
        slave: u8,
        profile: &'static ControllerProfile,
        decimals: u8,
    },
    /// The inline optical bench (lamp, flow cell, CCD spectrometer) for an external
    /// spectrometer driver: raw counts over a line protocol (`servers::serve_bench`).
    OpticalBench,
}

/// A running twin: the shared world and the serial ports it serves.
#[derive(Debug)]
pub struct TwinHandle {
    pub world: Arc<Mutex<World>>,
    pub clock: Clock,
    /// symbol → (slave path, fault injection)
    pub ports: BTreeMap<String, (String, Arc<PortFaults>)>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Why the twin could not start.
#[derive(Debug, thiserror::Error)]
#[error("virtual lab could not start: {0}")]
pub struct TwinError(pub String);

impl TwinHandle {
    /// Serve `ports` (symbol → kind) from `world` on a dedicated thread.
    pub fn start(
        world: Arc<Mutex<World>>,
        clock: Clock,
        ports: Vec<(String, TwinPortKind)>,
    ) -> Result<Self, TwinError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let w = world.clone();
        let c = clock.clone();
        let thread = std::thread::Builder::new()
            .name("virtual-lab".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut keep = Vec::new();
                    let mut out = BTreeMap::new();
                    for (sym, kind) in ports {
                        let pty = match crate::pty::open() {
                            Ok(p) => p,
                            Err(e) => {
                                let _ = tx.send(Err(format!("{sym}: {e}")));
                                return;
                            }
                        };
                        let faults = Arc::new(PortFaults::default());
                        out.insert(sym.clone(), (pty.slave_path.clone(), faults.clone()));
                        keep.push(pty.slave_keepalive);
                        match kind {
                            TwinPortKind::Pump => {
                                tokio::spawn(serve_pump(
                                    pty.master,
                                    vec![sym],
                                    w.clone(),
                                    c.clone(),
                                    faults,
                                ));
                            }
                            TwinPortKind::PumpNetwork(symbols) => {
                                tokio::spawn(serve_pump(
                                    pty.master,
                                    symbols,
                                    w.clone(),
                                    c.clone(),
                                    faults,
                                ));
                            }
                            TwinPortKind::Pid {
                                slave,
                                profile,
                                decimals,
                            } => {
                                let face = ControllerFace::new(profile, decimals);
                                face.configure(&mut super::servers::lock(&w).heater);
                                tokio::spawn(serve_pid(
                                    pty.master,
                                    slave,
                                    face,
                                    w.clone(),
                                    c.clone(),
                                    faults,
                                ));
                            }
                            TwinPortKind::OpticalBench => {
                                tokio::spawn(serve_bench(pty.master, w.clone(), c.clone(), faults));
                            }
                        }
                    }
                    let _ = tx.send(Ok(out));
                    let _ = stop_rx.await;
                    drop(keep);
                });
            })
            .map_err(|e| TwinError(e.to_string()))?;
        let ports = rx
            .recv()
            .map_err(|e| TwinError(e.to_string()))?
            .map_err(TwinError)?;
        Ok(Self {
            world,
            clock,
            ports,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Fault injection for a port.
    pub fn faults(&self, symbol: &str) -> Option<Arc<PortFaults>> {
        self.ports.get(symbol).map(|(_, f)| f.clone())
    }

    /// Slave path of a port.
    pub fn path(&self, symbol: &str) -> Option<&str> {
        self.ports.get(symbol).map(|(p, _)| p.as_str())
    }

    /// Run `f` on the world brought up to the current lab time.
    pub fn with_world<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        let mut w = super::servers::lock(&self.world);
        w.advance_to(self.clock.now_s());
        f(&mut w)
    }
}

impl Drop for TwinHandle {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
