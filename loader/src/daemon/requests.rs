//! The control socket's requests: one function per request, as
//! xdp-filter has a `do_<verb>` per verb. `dispatch` is the only door.
use super::{configure::RunOptions, Daemon};
use crate::{
    addr,
    bans::Scope,
    control::{Request, Response},
    duration,
    logs::jail::BanRequest,
    ops::readiness::Readiness,
};
use anyhow::{bail, Result};
use serde_json::json;
use std::{cell::RefCell, rc::Rc};

/// Answers one request. Reload is a request like the others: it needs the
/// options the daemon was started with and the service manager.
pub(super) fn dispatch(
    daemon: &Rc<RefCell<Daemon>>,
    opts: &RunOptions,
    readiness: &Rc<RefCell<Readiness>>,
    req: Request,
) -> Response {
    let result = match req {
        Request::Reload => do_reload(daemon, opts, readiness),
        Request::Status { jail } => daemon.borrow().status(jail.as_deref()),
        Request::Ban {
            net,
            duration,
            all_ports,
        } => daemon.borrow_mut().do_ban(&net, &duration, all_ports),
        Request::Unban { net, fleet } => daemon.borrow_mut().do_unban(&net, fleet),
        Request::Allow { net } => daemon.borrow_mut().do_allow(&net),
        Request::Disallow { net } => daemon.borrow_mut().do_disallow(&net),
        Request::Notes { offset, limit } => Ok(daemon.borrow().do_notes(offset, limit)),
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
) -> Result<serde_json::Value> {
    super::configure::reload(daemon, opts, readiness).map(|()| json!({ "reloaded": true }))
}

impl Daemon {
    /// A manual ban replaces whatever was there.
    fn do_ban(&mut self, net: &str, duration: &str, all_ports: bool) -> Result<serde_json::Value> {
        let net = addr::parse_ban_net(net)?;
        let bantime = duration::parse_bantime(duration)?;
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
        Ok(json!({ "banned": addr::display(&net) }))
    }

    /// The operator's unban lifts every origin's ban on this box.
    fn do_unban(&mut self, net: &str, fleet: bool) -> Result<serde_json::Value> {
        let net = addr::parse_net(net)?;
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
        Ok(json!({ "unbanned": addr::display(&net), "origins": origins, "fleet": fleet }))
    }

    fn do_allow(&mut self, net: &str) -> Result<serde_json::Value> {
        let net = addr::parse_net(net)?;
        self.operator_allowed.insert(net);
        self.dirty = true;
        self.refresh_never_ban()?;
        Ok(json!({ "allowed": addr::display(&net) }))
    }

    fn do_disallow(&mut self, net: &str) -> Result<serde_json::Value> {
        let net = addr::parse_net(net)?;
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
        Ok(json!({ "disallowed": addr::display(&net) }))
    }

    /// This box's own bans, then the networks only other origins ban
    /// (named by their origin).
    fn do_notes(&self, offset: usize, limit: usize) -> serde_json::Value {
        let local = self
            .bans
            .iter()
            .map(|(net, b)| json!([addr::display(net), b.jail, b.reason]));
        let remote = self
            .bans
            .remote()
            .iter()
            .filter(|(net, _)| self.bans.get(net).is_none())
            .map(|(net, b)| json!([addr::display(net), b.origin, b.reason]));
        let notes: Vec<serde_json::Value> = local
            .chain(remote)
            .skip(offset)
            .take(limit.min(100_000))
            .collect();
        json!({ "notes": notes })
    }
}
