//! Entity resolution: link accounts that share identifiers, then take connected components.
//!
//! Notebook rules ([`ErMode::Notebook`]): an edge for every pair sharing a device or a
//! payment token, and for every pair sharing an IP used by 2..=`ip_max_fanout` users. On the
//! notebook's data that glues 1,459 of 1,500 users into one component, because random
//! benign pairs share devices, payments and mid-size IP pools often enough to percolate.
//!
//! Corroborated rules ([`ErMode::Corroborated`], the default): only rare keys count (a device,
//! payment or IP shared by at most `max_key_fanout` users, IPs also within `ip_max_fanout`),
//! and a pair is linked only when it shares at least two distinct rare keys. One shared
//! identifier is coincidence at scale; two are coordination.

use std::collections::{BTreeMap, HashMap};

use vigil_config::ErMode;

/// The identifiers one user was seen with.
#[derive(Debug, Clone, Default)]
pub struct UserKeys {
    /// The user.
    pub user_id: String,
    /// Distinct IPs.
    pub ips: Vec<String>,
    /// Distinct device ids.
    pub devices: Vec<String>,
    /// Distinct payment tokens (no "none").
    pub payments: Vec<String>,
}

/// One edge between two users (indices into the user list, `a < b`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    /// First user (index).
    pub a: usize,
    /// Second user (index).
    pub b: usize,
    /// `shared_device`, `shared_payment` or `shared_ip`.
    pub edge_type: &'static str,
    /// The shared identifier.
    pub key: String,
}

/// Edges and components of a resolution.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// Edges sorted by (a, b, type, key).
    pub edges: Vec<Edge>,
    /// Component id per user, numbered in user order (the first user's component is 0).
    pub component: Vec<usize>,
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.0[hi] = lo;
        }
    }
}

/// Resolve users (given sorted by user id) into edges and components.
pub fn resolve(
    users: &[UserKeys],
    mode: ErMode,
    ip_max_fanout: usize,
    max_key_fanout: usize,
) -> Resolution {
    let mut by_key: BTreeMap<(&'static str, &str), Vec<usize>> = BTreeMap::new();
    for (i, u) in users.iter().enumerate() {
        for (t, keys) in [
            ("shared_device", &u.devices),
            ("shared_payment", &u.payments),
            ("shared_ip", &u.ips),
        ] {
            for k in keys {
                by_key.entry((t, k.as_str())).or_default().push(i);
            }
        }
    }
    let qualifies = |t: &str, fanout: usize| {
        fanout >= 2
            && match mode {
                ErMode::Notebook => t != "shared_ip" || fanout <= ip_max_fanout,
                ErMode::Corroborated => {
                    fanout <= max_key_fanout && (t != "shared_ip" || fanout <= ip_max_fanout)
                }
            }
    };
    let mut pair_keys: HashMap<(usize, usize), Vec<(&'static str, &str)>> = HashMap::new();
    for ((t, k), members) in &by_key {
        if !qualifies(t, members.len()) {
            continue;
        }
        for (x, &a) in members.iter().enumerate() {
            for &b in &members[x + 1..] {
                let pair = if a < b { (a, b) } else { (b, a) };
                pair_keys.entry(pair).or_default().push((t, k));
            }
        }
    }
    let min_keys = match mode {
        ErMode::Notebook => 1,
        ErMode::Corroborated => 2,
    };
    let mut edges: Vec<Edge> = pair_keys
        .into_iter()
        .filter(|(_, keys)| keys.len() >= min_keys)
        .flat_map(|((a, b), keys)| {
            keys.into_iter().map(move |(t, k)| Edge {
                a,
                b,
                edge_type: t,
                key: k.to_string(),
            })
        })
        .collect();
    edges.sort();
    let mut uf = UnionFind((0..users.len()).collect());
    for e in &edges {
        uf.union(e.a, e.b);
    }
    let mut ids: HashMap<usize, usize> = HashMap::new();
    let component = (0..users.len())
        .map(|i| {
            let root = uf.find(i);
            let next = ids.len();
            *ids.entry(root).or_insert(next)
        })
        .collect();
    Resolution { edges, component }
}

/// Per-component risk for analysts (components of two or more users).
#[derive(Debug, Clone)]
pub struct ComponentRisk {
    /// Component id.
    pub component_id: usize,
    /// Users in it.
    pub size: usize,
    /// Users with at least one flagged user-day.
    pub flagged_users: usize,
    /// `flagged_users / size`.
    pub flagged_share: f64,
    /// Highest risk score of any member's user-day.
    pub max_risk: f64,
    /// Edges inside it.
    pub n_edges: usize,
    /// Edge counts by type, e.g. `shared_device:3; shared_payment:3`.
    pub edge_types: String,
}

/// Risk summary of every component of two or more users, largest first.
pub fn component_risk(res: &Resolution, flagged: &[bool], max_risk: &[f64]) -> Vec<ComponentRisk> {
    let n_comp = res.component.iter().copied().max().map_or(0, |m| m + 1);
    let mut rows: Vec<ComponentRisk> = (0..n_comp)
        .map(|c| ComponentRisk {
            component_id: c,
            size: 0,
            flagged_users: 0,
            flagged_share: 0.0,
            max_risk: 0.0,
            n_edges: 0,
            edge_types: String::new(),
        })
        .collect();
    for (u, &c) in res.component.iter().enumerate() {
        rows[c].size += 1;
        if flagged.get(u).copied().unwrap_or(false) {
            rows[c].flagged_users += 1;
        }
        rows[c].max_risk = rows[c]
            .max_risk
            .max(max_risk.get(u).copied().unwrap_or(0.0));
    }
    let mut types: Vec<BTreeMap<&str, usize>> = vec![BTreeMap::new(); n_comp];
    for e in &res.edges {
        let c = res.component[e.a];
        rows[c].n_edges += 1;
        *types[c].entry(e.edge_type).or_default() += 1;
    }
    for (r, t) in rows.iter_mut().zip(&types) {
        r.flagged_share = r.flagged_users as f64 / r.size.max(1) as f64;
        r.edge_types = t
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join("; ");
    }
    rows.retain(|r| r.size >= 2);
    rows.sort_by_key(|r| (std::cmp::Reverse(r.size), r.component_id));
    rows
}

/// How well components match known ground truth.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ErQuality {
    /// Users resolved.
    pub users: usize,
    /// Components of two or more users.
    pub linked_components: usize,
    /// Size of the largest component.
    pub largest_component: usize,
    /// Largest component as a share of all users.
    pub largest_share: f64,
    /// Size-weighted mean purity of components of two or more users (the share of a
    /// component's users carrying its most common label: actor/ring id, or benign).
    pub mean_purity: f64,
    /// Known abusers.
    pub abusers: usize,
    /// Abusers in components of 2 to 50 users.
    pub abusers_in_small_components: usize,
    /// Ring members.
    pub ring_members: usize,
    /// Share of ring members in components of two or more users with purity >= 0.9 whose
    /// majority label is the member's own ring.
    pub ring_members_in_pure_components: f64,
}

/// Score a resolution against labels: `label[u]` is the user's actor or ring id (None for a
/// benign user); ring members are those whose label starts with `ring_`.
pub fn evaluate(res: &Resolution, label: &[Option<String>]) -> ErQuality {
    let n = res.component.len();
    let n_comp = res.component.iter().copied().max().map_or(0, |m| m + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_comp];
    for (u, &c) in res.component.iter().enumerate() {
        members[c].push(u);
    }
    let key = |u: usize| label.get(u).cloned().flatten().unwrap_or_default();
    // purity and majority label of each component (ties: the smaller label)
    let (purity, majority): (Vec<f64>, Vec<String>) = members
        .iter()
        .map(|m| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for &u in m {
                *counts.entry(key(u)).or_default() += 1;
            }
            let (label, top) = counts.iter().fold((String::new(), 0), |best, (l, &c)| {
                if c > best.1 { (l.clone(), c) } else { best }
            });
            (top as f64 / m.len().max(1) as f64, label)
        })
        .unzip();
    let linked: Vec<usize> = (0..n_comp).filter(|&c| members[c].len() >= 2).collect();
    let linked_users: usize = linked.iter().map(|&c| members[c].len()).sum();
    let is_abuser = |u: usize| label.get(u).is_some_and(Option::is_some);
    let is_ring = |u: usize| {
        label
            .get(u)
            .and_then(Option::as_deref)
            .is_some_and(|l| l.starts_with("ring_"))
    };
    let abusers = (0..n).filter(|&u| is_abuser(u)).count();
    let ring_members = (0..n).filter(|&u| is_ring(u)).count();
    let largest = members.iter().map(Vec::len).max().unwrap_or(0);
    ErQuality {
        users: n,
        linked_components: linked.len(),
        largest_component: largest,
        largest_share: largest as f64 / n.max(1) as f64,
        mean_purity: if linked_users > 0 {
            linked
                .iter()
                .map(|&c| purity[c] * members[c].len() as f64)
                .sum::<f64>()
                / linked_users as f64
        } else {
            1.0
        },
        abusers,
        abusers_in_small_components: (0..n)
            .filter(|&u| is_abuser(u) && (2..=50).contains(&members[res.component[u]].len()))
            .count(),
        ring_members,
        ring_members_in_pure_components: if ring_members > 0 {
            (0..n)
                .filter(|&u| {
                    let c = res.component[u];
                    is_ring(u) && members[c].len() >= 2 && purity[c] >= 0.9 && majority[c] == key(u)
                })
                .count() as f64
                / ring_members as f64
        } else {
            0.0
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn user(id: &str, ip: &str, dev: &str, pay: &str) -> UserKeys {
        UserKeys {
            user_id: id.into(),
            ips: vec![ip.into()],
            devices: vec![dev.into()],
            payments: if pay.is_empty() {
                vec![]
            } else {
                vec![pay.into()]
            },
        }
    }

    #[test]
    fn notebook_mode_links_on_any_single_shared_key() {
        let users = vec![
            user("u0", "ip1", "d1", "p1"),
            user("u1", "ip2", "d1", ""),
            user("u2", "ip3", "d3", "p1"),
            user("u3", "ip4", "d4", ""),
        ];
        let r = resolve(&users, ErMode::Notebook, 30, 50);
        assert_eq!(r.edges.len(), 2);
        assert_eq!(r.component, vec![0, 0, 0, 1]);
    }

    #[test]
    fn corroborated_mode_needs_two_rare_keys() {
        let users = vec![
            user("u0", "ip1", "d1", "p1"),
            user("u1", "ip2", "d1", "p1"), // device + payment with u0: linked
            user("u2", "ip2", "d3", "p9"), // only the IP with u1: not linked
            user("u3", "ip9", "d9", ""),
        ];
        let r = resolve(&users, ErMode::Corroborated, 30, 50);
        assert_eq!(r.component, vec![0, 0, 1, 2]);
        assert_eq!(r.edges.len(), 2);
        let risk = component_risk(&r, &[true, false, false, false], &[0.9, 0.2, 0.1, 0.0]);
        assert_eq!(risk.len(), 1);
        assert_eq!(risk[0].size, 2);
        assert!((risk[0].flagged_share - 0.5).abs() < 1e-12);
        assert_eq!(risk[0].edge_types, "shared_device:1; shared_payment:1");
        let q = evaluate(
            &r,
            &[Some("ring_000".into()), Some("ring_000".into()), None, None],
        );
        assert_eq!(q.ring_members, 2);
        assert!((q.ring_members_in_pure_components - 1.0).abs() < 1e-12);
        assert_eq!(q.abusers_in_small_components, 2);
    }
}
