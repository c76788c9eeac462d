//! Pseudo-terminals for the virtual lab: a virtual device serves the master side, and a real
//! driver opens the slave path with tokio-serial exactly as it would open `/dev/ttyUSB0`.

use std::io;

use tokio_serial::{SerialPort, SerialStream};

/// A fresh pseudo-terminal: the async master end and the path of the slave end.
#[derive(Debug)]
pub struct Pty {
    /// The device end (what a virtual instrument reads and writes).
    pub master: SerialStream,
    /// Path a driver opens (e.g. `/dev/pts/7`).
    pub slave_path: String,
    /// The slave end stays open here so the master never sees a hang-up between driver opens.
    pub slave_keepalive: SerialStream,
}

/// Open a raw-mode pseudo-terminal pair. Must be called inside a tokio runtime.
pub fn open() -> io::Result<Pty> {
    let (master, mut slave) = SerialStream::pair().map_err(io::Error::from)?;
    slave.set_exclusive(false).map_err(io::Error::from)?;
    let slave_path = slave
        .name()
        .ok_or_else(|| io::Error::other("pseudo-terminal slave has no path"))?;
    Ok(Pty {
        master,
        slave_path,
        slave_keepalive: slave,
    })
}

/// Open a serial port (real device or PTY slave) with tokio-serial, 8N1, no flow control,
/// non-exclusive.
pub fn open_serial(path: &str, baud: u32) -> io::Result<SerialStream> {
    use tokio_serial::SerialPortBuilderExt;
    let mut port = tokio_serial::new(path, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        // Shared: the safety watchdog must be able to open the port beside the driver.
        .exclusive(false)
        .open_native_async()
        .map_err(io::Error::from)?;
    let _ = port.set_exclusive(false);
    Ok(port)
}

/// Discard whatever the device sent that nobody has read yet.
pub fn discard_input(port: &SerialStream) {
    let _ = port.clear(tokio_serial::ClearBuffer::Input);
}
