//! The control socket's requests: one function per request, as
//! xdp-filter has a `do_<verb>` per verb. `dispatch` is the only door.
use super::{configure::RunOptions, Daemon};
use crate::{
    addr,
    bans::Scope,
    control::{
        Allowed, BanNet, BanTime, Banned, Disallowed, Net, Note, Notes, Reloaded, Reply, Request,
        Response, Unbanned,
    },
    logs::jail::BanRequest,
    ops::readiness::Readiness,
};
use anyhow::{bail, Result};
use std::{cell::RefCell, rc::Rc};

/// Answers one request. Reload is a request like the others: it needs the
/// options the daemon was started with and the service manager.
pub(super) fn dispatch(
    daemon: &Rc<RefCell<Daemon>>,
    opts: &RunOptions,
    readiness: &Rc<RefCell<Readiness>>,
    req: Request,
) -> Response {
    // The request's values were checked as it was read (see `control`).
    let result = match req {
        Request::Reload => do_reload(daemon, opts, readiness).map(Reply::Reloaded),
        Request::Status { jail } => daemon
            .borrow()
            .status(jail.as_deref())
            .map(|s| Reply::Status(Box::new(s))),
        Request::Ban {
            net,
            duration,
            all_ports,
        } => daemon
            .borrow_mut()
            .do_ban(net, duration, all_ports)
            .map(Reply::Banned),
        Request::Unban { net, fleet } => daemon
            .borrow_mut()
            .do_unban(net, fleet)
            .map(Reply::Unbanned),
        Request::Allow { net } => daemon.borrow_mut().do_allow(net).map(Reply::Allowed),
        Request::Disallow { net } => daemon.borrow_mut().do_disallow(net).map(Reply::Disallowed),
        Request::Trust { net, duration } => daemon
            .borrow_mut()
            .do_trust(net.get(), duration.get())
            .map(Reply::Trusted),
        Request::Untrust { net } => daemon
            .borrow_mut()
            .do_untrust(net.get())
            .map(Reply::Untrusted),
        Request::Notes { offset, limit } => {
            Ok(Reply::Notes(daemon.borrow().do_notes(offset, limit)))
        }
    };
    match result {
        Ok(data) => Response::ok(data),
        Err(e) => Response::err(&e),
    }
}

fn do_reload(
    daemon: &Rc<RefCell<Daemon>>,
    opts: &RunOptions,
    readiness: &Rc<RefCell<Readiness>>,
) -> Result<Reloaded> {
    super::configure::reload(daemon, opts, readiness).map(|()| Reloaded { reloaded: true })
}

impl Daemon {
    /// A manual ban replaces whatever was there.
    fn do_ban(&mut self, net: BanNet, bantime: BanTime, all_ports: bool) -> Result<Banned> {
        let (net, bantime) = (net.get(), bantime.get());
        // Logged whatever happens next: the unban below is a change even
        // if the ban after it fails.
        self.dirty = true;
        self.bans.unban(net)?;
        self.packet_bans.forget(&net);
        let r = BanRequest {
            net,
            host: net.addr(),
            jail: "manual".into(),
            duration: bantime,
            reason: "banned by hand".into(),
            line: String::new(),
            scope: if all_ports {
                Scope::AllPorts
            } else {
                Scope::Ports
            },
        };
        self.bans
            .ban(net, &r.jail, bantime, &r.reason, &r.line, r.scope)?;
        self.announce.ban(&r, "manual");
        for jail in &mut self.jails {
            jail.offenders.forget(&net);
        }
        self.dirty = true;
        Ok(Banned {
            banned: addr::display(&net),
        })
    }

    /// The operator's unban lifts every origin's ban on this box.
    fn do_unban(&mut self, net: Net, fleet: bool) -> Result<Unbanned> {
        let net = net.get();
        if fleet && !self.announce.workers.publishes() {
            bail!("`unban --fleet` needs a fleet: configure [redis]");
        }
        self.packet_bans.forget(&net);
        let jail = self.bans.jail_of(&net);
        let (any, origins) = self.bans.unban_all(net)?;
        if !any && !fleet {
            bail!(
                "{} is not banned (unban takes the exact address or network that was banned)",
                addr::display(&net)
            );
        }
        for jail in &mut self.jails {
            jail.offenders.forget(&net);
        }
        if any {
            self.announce
                .unban(net, jail.as_deref().unwrap_or("manual"), "operator");
        }
        for origin in &origins {
            tracing::info!(
                "unbanned {} (also lifted: {}'s ban)",
                addr::display(&net),
                crate::text::escape(origin)
            );
            self.remote_unbanned(origin, "operator");
        }
        self.announce.unban_everywhere(net, fleet);
        self.dirty = true;
        Ok(Unbanned {
            fleet,
            origins,
            unbanned: addr::display(&net),
        })
    }

    fn do_allow(&mut self, net: Net) -> Result<Allowed> {
        let net = net.get();
        self.operator_allowed.insert(net);
        self.dirty = true;
        self.refresh_never_ban()?;
        Ok(Allowed {
            allowed: addr::display(&net),
        })
    }

    fn do_disallow(&mut self, net: Net) -> Result<Disallowed> {
        let net = net.get();
        if !self.operator_allowed.remove(&net) {
            if let Some((_, why)) = self.never_ban.entries().iter().find(|(n, _)| *n == net) {
                bail!(
                    "{} is not yours to remove: it is never banned as {why}",
                    addr::display(&net)
                );
            }
            bail!("{} is not in the allowlist", addr::display(&net));
        }
        self.dirty = true;
        self.refresh_never_ban()?;
        Ok(Disallowed {
            disallowed: addr::display(&net),
        })
    }

    /// This box's own bans, then the networks only other origins ban
    /// (named by their origin).
    fn do_notes(&self, offset: usize, limit: usize) -> Notes {
        let note = |net, jail: &str, reason: &str| Note {
            address: addr::display(net),
            jail: jail.to_owned(),
            reason: reason.to_owned(),
        };
        let local = self.bans.iter().map(|(net, b)| note(net, b.jail, b.reason));
        let remote = self
            .bans
            .remote()
            .iter()
            .filter(|(net, _)| self.bans.get(net).is_none())
            .map(|(net, b)| note(net, b.origin, b.reason));
        let notes = local
            .chain(remote)
            .skip(offset)
            .take(limit.min(100_000))
            .collect();
        Notes { notes }
    }
}
