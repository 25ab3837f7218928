//! The balancer's picking, by Apache's arithmetic worked by hand.
use super::*;
use crate::config::{MemberConfig, parse_member_url};
use flags::StatusFlags;

fn member(port: u16, factor: u32, status: &str) -> MemberConfig {
    MemberConfig {
        url: parse_member_url(&format!("http://127.0.0.1:{port}")).unwrap(),
        lbfactor: factor * 100,
        lbset: 0,
        route: None,
        redirect: None,
        status: StatusFlags::default().apply(status).unwrap(),
        ..MemberConfig::for_url(parse_member_url(&format!("http://127.0.0.1:{port}")).unwrap())
    }
}

fn balancer(method: LbMethod, members: Vec<MemberConfig>) -> Balancer {
    Balancer::new(&config(method, members), false, Arc::default())
}

fn config(method: LbMethod, members: Vec<MemberConfig>) -> BalancerConfig {
    BalancerConfig {
        name: "t".into(),
        lbmethod: method,
        maxattempts: 1,
        nofailover: false,
        timeout: Duration::ZERO,
        forcerecovery: true,
        growth: 0,
        ejection: EjectionPolicy::default(),
        http: Default::default(),
        members,
    }
}

/// Position in config order of the member picked.
fn pos(b: &Balancer, p: &Pick) -> usize {
    b.members.iter().position(|m| m.id == p.member().id).unwrap()
}

fn seq(b: &Balancer, n: usize) -> Vec<usize> {
    (0..n).map(|_| pos(b, &b.pick(&PickContext::default()).unwrap())).collect()
}

#[test]
fn byrequests_weights_1_1_1_2() {
    let b = balancer(
        LbMethod::ByRequests,
        vec![member(1, 1, ""), member(2, 1, ""), member(3, 1, ""), member(4, 2, "")],
    );
    // Worked by hand from Apache's arithmetic: d a b c d, repeating.
    assert_eq!(seq(&b, 10), vec![3, 0, 1, 2, 3, 3, 0, 1, 2, 3]);
}

#[test]
fn byrequests_skips_disabled() {
    let b = balancer(
        LbMethod::ByRequests,
        vec![member(1, 1, ""), member(2, 1, "D"), member(3, 1, ""), member(4, 1, "")],
    );
    assert_eq!(seq(&b, 6), vec![0, 2, 3, 0, 2, 3]);
}

#[test]
fn bybusyness_prefers_fewest_in_flight() {
    let b = balancer(LbMethod::ByBusyness, vec![member(1, 1, ""), member(2, 1, "")]);
    let first = b.pick(&PickContext::default()).unwrap();
    assert_eq!(pos(&b, &first), 0);
    // While member 0 is busy, member 1 wins every time.
    let second = b.pick(&PickContext::default()).unwrap();
    assert_eq!(pos(&b, &second), 1);
    drop(second);
    assert_eq!(pos(&b, &b.pick(&PickContext::default()).unwrap()), 1);
}

#[test]
fn standby_only_when_nothing_else_and_spare_replaces_unusable() {
    let b = balancer(
        LbMethod::ByRequests,
        vec![member(1, 1, ""), member(2, 1, "H"), member(3, 1, "R")],
    );
    assert!(seq(&b, 4).iter().all(|&i| i == 0));
    b.members[0].mark_error(now_ms(), "down".into());
    // The spare stands in for the one unusable plain member before the standby is used.
    assert_eq!(seq(&b, 2), vec![2, 2]);
    b.members[2].set_flags(flags::DISABLED);
    assert_eq!(seq(&b, 2), vec![1, 1]);
}

#[test]
fn a_retry_skips_members_already_tried() {
    let b =
        balancer(LbMethod::ByRequests, vec![member(1, 1, ""), member(2, 1, ""), member(3, 1, "R")]);
    let ids: Vec<MemberId> = b.members.iter().map(|m| m.id).collect();
    let ctx = PickContext { tried: vec![ids[0]], ..Default::default() };
    // Member 0 was tried: member 1 is picked, and the spare stands in for member 0.
    let picks: Vec<usize> = (0..4).map(|_| pos(&b, &b.pick(&ctx).unwrap())).collect();
    assert!(!picks.contains(&0), "{picks:?}");
    assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
    let ctx = PickContext { tried: ids, ..Default::default() };
    assert!(b.pick(&ctx).is_none());
}

#[test]
fn force_recovery_clears_all_errors() {
    let b = balancer(LbMethod::ByRequests, vec![member(1, 1, ""), member(2, 1, "")]);
    for m in &b.members {
        m.mark_error(now_ms(), "down".into());
    }
    assert!(b.pick(&PickContext::default()).is_some());
    assert!(b.members.iter().all(|m| m.usable()));
}

#[test]
fn retry_timer_returns_member() {
    let mut cfg = member(1, 1, "");
    cfg.retry = Duration::ZERO;
    let m = Member::new(cfg);
    m.mark_error(now_ms(), "x".into());
    assert!(!m.usable());
    m.retry_check(now_ms());
    assert!(m.usable());
    let mut cfg = member(1, 1, "I");
    cfg.retry = Duration::from_secs(60);
    let m = Member::new(cfg);
    assert!(!m.mark_error(now_ms(), "x".into()));
    assert!(m.usable());
}

#[test]
fn a_rebuild_keeps_unchanged_members_and_their_state() {
    let old = balancer(LbMethod::ByRequests, vec![member(1, 1, ""), member(2, 1, "")]);
    let kept = Arc::clone(&old.members[0]);
    for _ in 0..3 {
        drop(old.pick(&PickContext::default()));
    }
    let elected = kept.elected();
    assert!(elected >= 1);
    kept.mark_error(now_ms(), "down".into());
    // Member 1 keeps its URL with a new weight and the H flag; member 2 goes; member 3 is new.
    let new_cfg = config(LbMethod::ByRequests, vec![member(3, 1, ""), member(1, 3, "+H")]);
    let new = Balancer::rebuild(&new_cfg, false, Arc::default(), Some(&old));
    assert_eq!(new.members[1].id, kept.id);
    assert!(Arc::ptr_eq(&new.members[1], &kept));
    assert_eq!(kept.elected(), elected, "counters survive");
    assert!(kept.flags().contains(flags::IN_ERROR), "live E survives");
    assert!(kept.flags().contains(flags::HOT_STANDBY), "configured flags follow the file");
    assert_eq!(kept.lbfactor(), 300);
    assert_ne!(new.members[0].id, old.members[1].id);
    // A weight changed: every lbstatus restarts at the member's own load factor (Apache).
    assert_eq!(new.members[0].lbstatus(), 100);
    assert_eq!(kept.lbstatus(), 300);
}

#[test]
fn ejection_spends_the_errors_in_a_row() {
    let m = Member::new(member(1, 1, ""));
    for _ in 0..5 {
        m.report(Outcome::Failed("refused".into()));
    }
    assert_eq!(m.consecutive_errors(), 5);
    m.eject(now_ms() + 1000, "5 errors".into());
    assert_eq!(m.consecutive_errors(), 0);
}

#[test]
fn a_sticky_pick_consumes_byrequests_quota() {
    let mut ms = vec![member(1, 1, ""), member(2, 1, ""), member(3, 1, "")];
    for (m, r) in ms.iter_mut().zip(["a", "b", "c"]) {
        m.route = Some(r.to_owned());
    }
    let b = balancer(LbMethod::ByRequests, ms);
    let routed = PickContext { route: Some(Box::from(&b"c"[..])), ..Default::default() };
    let p = b.pick(&routed).unwrap();
    assert!(p.routed);
    assert_eq!(pos(&b, &p), 2);
    // Worked by hand: the routed pick leaves lbstatus (100, 100, -200); then a (200, 200, -100
    // → -100, 200, -100), b (0, 300, 0 → 0, 0, 0), a. Without the quota it would be a, b, c.
    assert_eq!(seq(&b, 3), vec![0, 1, 0]);
    // An unknown route is balanced by the method; a route whose member is out goes elsewhere,
    // unless nofailover.
    let unknown = PickContext { route: Some(Box::from(&b"zz"[..])), ..Default::default() };
    assert!(!b.pick(&unknown).unwrap().routed);
    b.members[2].set_flags(flags::DISABLED);
    assert!(!b.pick(&routed).unwrap().routed);
    assert!(!b.refuses(&routed));
    let mut cfg = config(LbMethod::ByRequests, vec![member(1, 1, ""), member(2, 1, "")]);
    cfg.members[1].route = Some("c".into());
    cfg.nofailover = true;
    let strict = Balancer::new(&cfg, false, Arc::default());
    strict.members[1].set_flags(flags::DISABLED);
    assert!(strict.pick(&routed).is_none() && strict.refuses(&routed));
    assert!(strict.pick(&unknown).is_some());
}
