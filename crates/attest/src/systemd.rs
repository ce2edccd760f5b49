//! The `systemd` workload attestor: the systemd unit a process runs in.
//!
//! It asks the service manager over D-Bus, as SPIRE v1.13.3's `systemd` plugin does
//! (`pkg/agent/plugin/workloadattestor/systemd/systemd_posix.go`):
//! `org.freedesktop.systemd1.Manager.GetUnitByPID(u) -> o` on `/org/freedesktop/systemd1`,
//! then the `Id` and `FragmentPath` properties of the `org.freedesktop.systemd1.Unit`
//! interface of that object. Selectors, in this order, of type `systemd`:
//!
//! | value | from |
//! |---|---|
//! | `id:<unit>` | `Id`, e.g. `nginx.service` |
//! | `fragment_path:<path>` | `FragmentPath`, the unit file, e.g. `/lib/systemd/system/nginx.service`; empty (`fragment_path:`) for a unit without a file |
//!
//! The plugin takes no configuration. The agent needs to be allowed to call `GetUnitByPID`
//! and read unit properties on the system bus, which systemd's default bus policy grants every
//! user: no capability is needed.

use std::sync::{Mutex, PoisonError};

use tracing::debug;
use ward_core::Selector;
use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use crate::{AttestError, WorkloadAttestor};

/// The selector type and plugin name.
pub const SYSTEMD: &str = "systemd";

const DESTINATION: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
const PROPERTIES_INTERFACE: &str = "org.freedesktop.DBus.Properties";

/// Which D-Bus bus the service manager is on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SystemdBus {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else `/run/dbus/system_bus_socket`), where
    /// the system's service manager is: SPIRE's only choice.
    #[default]
    System,
    /// A bus at a D-Bus address such as `unix:path=/run/user/1000/bus` (a user's service
    /// manager).
    Address(String),
}

/// The `systemd` workload attestor. It keeps one bus connection and opens a new one after
/// a connection failure.
#[derive(Debug, Default)]
pub struct SystemdAttestor {
    bus: SystemdBus,
    connection: Mutex<Option<Connection>>,
}

impl SystemdAttestor {
    /// An attestor asking the service manager on `bus`. It connects on first use.
    pub fn new(bus: SystemdBus) -> Self {
        Self { bus, connection: Mutex::new(None) }
    }

    fn connect(&self) -> Result<Connection, AttestError> {
        let mut cached = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(conn) = cached.as_ref() {
            return Ok(conn.clone());
        }
        let built = match &self.bus {
            SystemdBus::System => Connection::system(),
            SystemdBus::Address(address) => {
                zbus::blocking::connection::Builder::address(address.as_str())
                    .and_then(zbus::blocking::connection::Builder::build)
            }
        };
        let conn = built.map_err(|e| AttestError::DbusConnect { reason: e.to_string() })?;
        *cached = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection after a transport failure, so the next call reconnects; a
    /// D-Bus error reply (no unit for the pid) leaves it in place.
    fn forget_connection_on(&self, e: &zbus::Error) {
        if !matches!(e, zbus::Error::MethodError(..) | zbus::Error::FDO(..)) {
            debug!(error = %e, "dropping the D-Bus connection to the service manager");
            *self.connection.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// The unit object path of `pid`.
    fn unit_of(&self, conn: &Connection, pid: u32) -> Result<OwnedObjectPath, AttestError> {
        let unit_err = |e: zbus::Error| AttestError::UnitByPid { pid, reason: e.to_string() };
        let reply = conn
            .call_method(
                Some(DESTINATION),
                MANAGER_PATH,
                Some(MANAGER_INTERFACE),
                "GetUnitByPID",
                &(pid,),
            )
            .inspect_err(|e| self.forget_connection_on(e))
            .map_err(unit_err)?;
        reply.body().deserialize::<OwnedObjectPath>().map_err(unit_err)
    }

    /// The string property `name` of the unit at `unit`.
    fn unit_property(
        &self,
        conn: &Connection,
        unit: &OwnedObjectPath,
        name: &'static str,
    ) -> Result<String, AttestError> {
        let prop_err = |e: zbus::Error| AttestError::UnitProperty { name, reason: e.to_string() };
        let reply = conn
            .call_method(
                Some(DESTINATION),
                unit.as_ref(),
                Some(PROPERTIES_INTERFACE),
                "Get",
                &(UNIT_INTERFACE, name),
            )
            .inspect_err(|e| self.forget_connection_on(e))
            .map_err(prop_err)?;
        let value = reply.body().deserialize::<OwnedValue>().map_err(prop_err)?;
        let shown = format!("{value:?}");
        String::try_from(value)
            .map_err(|_| AttestError::UnitPropertyNotString { name, value: shown })
    }
}

impl WorkloadAttestor for SystemdAttestor {
    fn name(&self) -> &'static str {
        SYSTEMD
    }

    /// # Errors
    /// [`AttestError::NoCallerPid`] for pid 0 (which systemd would read as "the caller", the
    /// agent itself), [`AttestError::DbusConnect`], [`AttestError::UnitByPid`] when the
    /// process does not exist or is in no unit, [`AttestError::UnitProperty`] and
    /// [`AttestError::UnitPropertyNotString`] when a property cannot be read.
    fn attest(&self, pid: u32) -> Result<Vec<Selector>, AttestError> {
        if pid == 0 {
            return Err(AttestError::NoCallerPid);
        }
        let conn = self.connect()?;
        let unit = self.unit_of(&conn, pid)?;
        let id = self.unit_property(&conn, &unit, "Id")?;
        let fragment_path = self.unit_property(&conn, &unit, "FragmentPath")?;
        Ok(vec![
            Selector::new(SYSTEMD, &format!("id:{id}"))?,
            Selector::new(SYSTEMD, &format!("fragment_path:{fragment_path}"))?,
        ])
    }
}
