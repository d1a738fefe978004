//! `time-cli matrix`: who is linked with whom, from every node's own view, and whether the
//! mesh is complete and clean. [`build`] is pure (answers in, matrix out), so the rules are
//! tested on canned JSON without a network; fetching lives in `main`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use crate::fetch::{ConsensusInfo, Peer};
use crate::format;

/// What one node URL answered: its summary and peers, or why it could not be read.
pub type Answer = Result<(ConsensusInfo, Vec<Peer>), String>;

/// The legend printed under the matrix (the full one is in `--help`).
pub const LEGEND: &str = "legend: \u{2192} row dialed column, \u{2190} column dialed row, \
\u{b7} self, \u{2717} missing, 2 duplicate (count), ! wrong direction (dialed by the higher \
address), ? unknown (unreachable)";

/// One entry of a node's `/peers`, reduced to what the matrix needs.
#[derive(Clone, Copy, Debug)]
struct Link {
    /// The viewing node dialed it.
    outbound: bool,
    /// The viewing node lists the peer as a masternode.
    masternode: bool,
}

/// A node's own view of the mesh.
#[derive(Debug)]
struct View {
    /// Whether the node says it is a masternode.
    masternode: bool,
    /// Its `/peers` entries by the peer's canonical P2P address (more than one: duplicates).
    links: BTreeMap<SocketAddr, Vec<Link>>,
}

/// One node of the matrix.
#[derive(Debug)]
struct Node {
    /// The status URL as the operator gave it.
    url: String,
    /// Its P2P address: from its own `/consensus_info`, or for a node that could not be read,
    /// from the others' peer lists when the URL's host names exactly one unclaimed peer.
    addr: Option<SocketAddr>,
    /// `None` when the node could not be read.
    view: Option<View>,
    /// Why the view is missing, for the row label.
    trouble: &'static str,
}

/// One cell: the row node's view of its link with the column node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// The diagonal.
    Itself,
    /// The row node dialed the column node.
    Outbound,
    /// The column node dialed the row node.
    Inbound,
    /// No link.
    Missing,
    /// This many links (more than one).
    Duplicate(usize),
    /// One link, between masternodes, dialed by the higher address.
    WrongDirection,
    /// The row node could not be read, or the column node's address is unknown.
    Unknown,
}

impl Cell {
    /// The symbol printed for the cell.
    pub fn symbol(self) -> String {
        match self {
            Cell::Itself => "\u{b7}".to_string(),
            Cell::Outbound => "\u{2192}".to_string(),
            Cell::Inbound => "\u{2190}".to_string(),
            Cell::Missing => "\u{2717}".to_string(),
            // One character keeps the grid narrow; more than nine copies of a link is a
            // disaster whose exact size matters less than the `+`.
            Cell::Duplicate(n) if n <= 9 => n.to_string(),
            Cell::Duplicate(_) => "+".to_string(),
            Cell::WrongDirection => "!".to_string(),
            Cell::Unknown => "?".to_string(),
        }
    }
}

/// The counts of the summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Pairs joined by exactly one link that both ends agree on.
    pub links: usize,
    /// All pairs, k(k-1)/2.
    pub pairs: usize,
    /// Pairs with more than one link.
    pub duplicates: usize,
    /// Pairs of masternodes with a link dialed by the higher address.
    pub wrong_direction: usize,
    /// Nodes that could not be read.
    pub unreachable: usize,
}

impl Summary {
    /// Complete and clean: the exit-0 condition.
    pub fn healthy(&self) -> bool {
        self.links == self.pairs
            && self.duplicates == 0
            && self.wrong_direction == 0
            && self.unreachable == 0
    }

    /// The summary line, exactly as SPEC §2 fixes it.
    pub fn line(&self) -> String {
        format!(
            "links: {} of {}, duplicates: {}, wrong direction: {}, unreachable nodes: {}",
            self.links, self.pairs, self.duplicates, self.wrong_direction, self.unreachable
        )
    }
}

/// The computed matrix.
#[derive(Debug)]
pub struct Matrix {
    /// In display order: known addresses numerically, then the unknown ones as given.
    nodes: Vec<Node>,
    /// `cells[row][column]`.
    pub cells: Vec<Vec<Cell>>,
    pub summary: Summary,
}

/// A problem with one node URL, for stderr as `time-cli: URL: message`.
pub type Problem = (String, String);

/// Builds the matrix from each URL's answer, in any order. Also returns the problems to
/// report: unreachable nodes and answers that cannot be placed.
pub fn build(answers: Vec<(String, Answer)>) -> (Matrix, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    for (url, answer) in answers {
        let (info, peers) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                problems.push((url.clone(), e));
                nodes.push(unread(url, "unreachable"));
                continue;
            }
        };
        let addr = info.local_address.as_deref().and_then(parse_addr);
        let Some(addr) = addr else {
            // Without its address the node cannot be matched with anyone's peer list.
            problems.push((
                url.clone(),
                format!(
                    "the node does not know its P2P address (local_address: {:?})",
                    info.local_address
                ),
            ));
            nodes.push(unread(url, "address unknown"));
            continue;
        };
        if let Some(first) = nodes.iter().find(|n| n.addr == Some(addr)) {
            // The same node under two URLs (say `localhost` and `127.0.0.1`): one row is the
            // truth; a second would invent k-1 missing pairs.
            problems.push((
                url,
                format!("same node as {} ({addr}), shown once", first.url),
            ));
            continue;
        }
        let mut links: BTreeMap<SocketAddr, Vec<Link>> = BTreeMap::new();
        for peer in peers {
            match parse_addr(&peer.address) {
                Some(peer_addr) => links.entry(peer_addr).or_default().push(Link {
                    outbound: peer.direction == "outbound",
                    masternode: peer.masternode,
                }),
                None => problems.push((
                    url.clone(),
                    format!("ignoring a peer with a bad address {:?}", peer.address),
                )),
            }
        }
        let view = View {
            masternode: info.masternode,
            links,
        };
        nodes.push(Node {
            url,
            addr: Some(addr),
            view: Some(view),
            trouble: "",
        });
    }
    identify_unread(&mut nodes);
    // Numeric order, the order of the dial rule; unknown addresses last, stable as given.
    nodes.sort_by_key(|n| (n.addr.is_none(), n.addr));

    let k = nodes.len();
    let cells = (0..k)
        .map(|r| (0..k).map(|c| cell(&nodes, r, c)).collect())
        .collect();
    let mut summary = Summary {
        pairs: k * k.saturating_sub(1) / 2,
        unreachable: nodes.iter().filter(|n| n.view.is_none()).count(),
        ..Summary::default()
    };
    for i in 0..k {
        for j in i + 1..k {
            let (a, b) = (&nodes[i], &nodes[j]);
            let (ab, ba) = (seen(a, b), seen(b, a));
            if [ab, ba].iter().flatten().any(|links| links.len() > 1) {
                summary.duplicates += 1;
            }
            let wrong = |from: &Node, to: &Node, links: Option<&[Link]>| {
                links
                    .unwrap_or_default()
                    .iter()
                    .any(|l| dialed_by_higher(from, to, *l))
            };
            if masternode_pair(a, b) && (wrong(a, b, ab) || wrong(b, a, ba)) {
                summary.wrong_direction += 1;
            }
            let linked = match (ab, ba) {
                // Agreed: one end dialed, the other accepted.
                (Some([x]), Some([y])) => x.outbound != y.outbound,
                // Only one end could be read: its word is all there is.
                (Some([_]), None) | (None, Some([_])) => true,
                _ => false,
            };
            summary.links += usize::from(linked);
        }
    }
    (
        Matrix {
            nodes,
            cells,
            summary,
        },
        problems,
    )
}

impl Matrix {
    /// The grid (an index row and column, each row labelled with its node's address), the
    /// legend line and the summary line.
    pub fn render(&self) -> String {
        // Columns are indexes, not addresses: 16 addresses across would be ~300 characters;
        // the row labels double as the index's legend.
        let mut header = vec!["#".to_string(), "node".to_string()];
        header.extend((1..=self.nodes.len()).map(|i| i.to_string()));
        let mut rows = vec![header];
        for (i, node) in self.nodes.iter().enumerate() {
            let label = match (node.addr, node.view.is_some()) {
                (Some(addr), true) => addr.to_string(),
                (Some(addr), false) => format!("{addr} ({}: {})", node.trouble, node.url),
                (None, _) => format!("{} ({})", node.url, node.trouble),
            };
            let mut row = vec![(i + 1).to_string(), label];
            row.extend(self.cells[i].iter().map(|c| c.symbol()));
            rows.push(row);
        }
        let mut out = format::table(&rows);
        out.push_str(LEGEND);
        out.push('\n');
        out.push_str(&self.summary.line());
        out.push('\n');
        out
    }
}

fn unread(url: String, trouble: &'static str) -> Node {
    Node {
        url,
        addr: None,
        view: None,
        trouble,
    }
}

/// Parses a P2P address in canonical form: an IPv4-mapped IPv6 address is the IPv4 address,
/// as in the daemon's ordering rule, so one node never gets two rows.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let addr: SocketAddr = text.parse().ok()?;
    Some(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
}

/// The IP in a URL's host part, if it is a literal IP.
fn url_host_ip(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    Some(host.parse::<IpAddr>().ok()?.to_canonical())
}

/// Gives a node that could not be read its P2P address when that is unambiguous: a node's
/// status endpoint usually shares its IP with its P2P address, so if the readable nodes know
/// exactly one peer on that IP that is not one of them, and no other unread node has that IP,
/// it is this node. Then its column shows the others' links with it and its pairs count by
/// their view, instead of everything being unknown.
fn identify_unread(nodes: &mut [Node]) {
    let known: BTreeSet<SocketAddr> = nodes.iter().filter_map(|n| n.addr).collect();
    let strangers: BTreeSet<SocketAddr> = nodes
        .iter()
        .filter_map(|n| n.view.as_ref())
        .flat_map(|v| v.links.keys().copied())
        .filter(|a| !known.contains(a))
        .collect();
    let hosts: Vec<Option<IpAddr>> = nodes
        .iter()
        .map(|n| n.addr.is_none().then(|| url_host_ip(&n.url)).flatten())
        .collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        let Some(ip) = hosts[i] else { continue };
        if hosts.iter().filter(|h| **h == Some(ip)).count() > 1 {
            continue;
        }
        let mut candidates = strangers.iter().filter(|a| a.ip() == ip);
        if let (Some(addr), None) = (candidates.next(), candidates.next()) {
            node.addr = Some(*addr);
        }
    }
}

/// `from`'s entries for `to`: `None` when `from` could not be read or `to`'s address is
/// unknown, so there is no view to speak of.
fn seen<'a>(from: &'a Node, to: &Node) -> Option<&'a [Link]> {
    let view = from.view.as_ref()?;
    let addr = to.addr?;
    Some(view.links.get(&addr).map_or(&[][..], Vec::as_slice))
}

/// Whether the dial rule applies to the pair: both are masternodes as far as every readable
/// end can tell (a node's own `masternode` flag and its peer entries for the other). When no
/// end says otherwise the rule is assumed, so a doubtful link is flagged rather than hidden.
fn masternode_pair(a: &Node, b: &Node) -> bool {
    [(a, b), (b, a)].iter().all(|(from, to)| match &from.view {
        None => true,
        Some(view) => {
            view.masternode
                && seen(from, to)
                    .unwrap_or_default()
                    .iter()
                    .all(|l| l.masternode)
        }
    })
}

/// Whether a link in `from`'s view of `to` was dialed by the higher of the two addresses.
fn dialed_by_higher(from: &Node, to: &Node, link: Link) -> bool {
    match (from.addr, to.addr) {
        (Some(f), Some(t)) if link.outbound => f > t,
        (Some(f), Some(t)) => t > f,
        _ => false,
    }
}

fn cell(nodes: &[Node], row: usize, column: usize) -> Cell {
    if row == column {
        return Cell::Itself;
    }
    let (from, to) = (&nodes[row], &nodes[column]);
    match seen(from, to) {
        None => Cell::Unknown,
        Some([]) => Cell::Missing,
        Some([link]) if masternode_pair(from, to) && dialed_by_higher(from, to, *link) => {
            Cell::WrongDirection
        }
        Some([link]) if link.outbound => Cell::Outbound,
        Some([_]) => Cell::Inbound,
        Some(links) => Cell::Duplicate(links.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Cell::*;

    /// A node's answer from canned JSON, the way the daemon serves it.
    fn answer(local: &str, masternode: bool, peers: &[(&str, &str)]) -> Answer {
        let info = format!(
            r#"{{"network":"testnet","version":"0.1.0","local_address":"{local}",
               "masternode":{masternode},"active_masternodes":0,"total_masternodes":0,
               "connected_peers":{n},"inbound":0,"outbound":0,"uptime_secs":1}}"#,
            n = peers.len()
        );
        let peers: Vec<String> = peers
            .iter()
            .map(|(addr, dir)| {
                format!(
                    r#"{{"address":"{addr}","direction":"{dir}","masternode":true,
                        "connected_secs":5,"last_recv_secs":1,"rtt_ms":0.2,
                        "agent":"timed/0.1.0"}}"#
                )
            })
            .collect();
        let peers = format!("[{}]", peers.join(","));
        Ok((
            serde_json::from_str(&info).unwrap(),
            serde_json::from_str(&peers).unwrap(),
        ))
    }

    fn addr(host: u8) -> String {
        format!("127.0.0.{host}:24100")
    }

    fn url(host: u8) -> String {
        format!("http://127.0.0.{host}:8332")
    }

    /// The answers of a complete, clean mesh of masternodes on `hosts`, in the given order.
    fn mesh(hosts: &[u8]) -> Vec<(String, Answer)> {
        hosts
            .iter()
            .map(|&me| {
                let peers: Vec<(String, &str)> = hosts
                    .iter()
                    .filter(|&&h| h != me)
                    .map(|&h| (addr(h), if me < h { "outbound" } else { "inbound" }))
                    .collect();
                let peers: Vec<(&str, &str)> =
                    peers.iter().map(|(a, d)| (a.as_str(), *d)).collect();
                (url(me), answer(&addr(me), true, &peers))
            })
            .collect()
    }

    fn summary(links: usize, pairs: usize, dup: usize, wrong: usize, unreach: usize) -> Summary {
        Summary {
            links,
            pairs,
            duplicates: dup,
            wrong_direction: wrong,
            unreachable: unreach,
        }
    }

    /// Replaces `url`'s answer in `answers`.
    fn replace(answers: &mut [(String, Answer)], url: &str, new: Answer) {
        answers.iter_mut().find(|(u, _)| u == url).unwrap().1 = new;
    }

    #[test]
    fn complete_mesh_is_healthy_and_sorted_numerically() {
        // Given out of order and straddling 9/10, where string order would be wrong.
        let (m, problems) = build(mesh(&[10, 2, 9, 3]));
        assert!(problems.is_empty(), "{problems:?}");
        let order: Vec<String> = m
            .nodes
            .iter()
            .map(|n| n.addr.unwrap().to_string())
            .collect();
        assert_eq!(order, [addr(2), addr(3), addr(9), addr(10)]);
        assert_eq!(
            m.cells,
            vec![
                vec![Itself, Outbound, Outbound, Outbound],
                vec![Inbound, Itself, Outbound, Outbound],
                vec![Inbound, Inbound, Itself, Outbound],
                vec![Inbound, Inbound, Inbound, Itself],
            ]
        );
        assert_eq!(m.summary, summary(6, 6, 0, 0, 0));
        assert!(m.summary.healthy());
        let text = m.render();
        assert!(
            text.ends_with(
                "links: 6 of 6, duplicates: 0, wrong direction: 0, unreachable nodes: 0\n"
            ),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#  node              1  2  3  4");
        assert_eq!(
            lines[1],
            "1  127.0.0.2:24100   \u{b7}  \u{2192}  \u{2192}  \u{2192}"
        );
        assert_eq!(
            lines[4],
            "4  127.0.0.10:24100  \u{2190}  \u{2190}  \u{2190}  \u{b7}"
        );
        assert_eq!(lines[5], LEGEND);
    }

    #[test]
    fn numeric_order_covers_ports_and_ipv6() {
        let mut answers = Vec::new();
        for local in [
            "[::1]:24100",
            "127.0.0.10:24100",
            "127.0.0.9:24101",
            "127.0.0.9:9000",
            "[::ffff:127.0.0.5]:24100",
        ] {
            answers.push((format!("http://{local}"), answer(local, true, &[])));
        }
        let (m, _) = build(answers);
        let order: Vec<String> = m
            .nodes
            .iter()
            .map(|n| n.addr.unwrap().to_string())
            .collect();
        assert_eq!(
            order,
            [
                "127.0.0.5:24100",
                "127.0.0.9:9000",
                "127.0.0.9:24101",
                "127.0.0.10:24100",
                "[::1]:24100"
            ]
        );
    }

    #[test]
    fn missing_link_on_both_ends() {
        let mut answers = mesh(&[2, 3, 4]);
        replace(
            &mut answers,
            &url(2),
            answer(&addr(2), true, &[(&addr(3), "outbound")]),
        );
        replace(
            &mut answers,
            &url(4),
            answer(&addr(4), true, &[(&addr(3), "inbound")]),
        );
        let (m, problems) = build(answers);
        assert!(problems.is_empty());
        assert_eq!(m.cells[0][2], Missing);
        assert_eq!(m.cells[2][0], Missing);
        assert_eq!(m.summary, summary(2, 3, 0, 0, 0));
        assert!(!m.summary.healthy());
    }

    #[test]
    fn a_link_only_one_end_reports_is_not_agreed() {
        let mut answers = mesh(&[2, 3]);
        replace(&mut answers, &url(3), answer(&addr(3), true, &[]));
        let (m, _) = build(answers);
        assert_eq!(m.cells[0][1], Outbound);
        assert_eq!(m.cells[1][0], Missing);
        assert_eq!(m.summary, summary(0, 1, 0, 0, 0));
    }

    #[test]
    fn duplicate_link() {
        let mut answers = mesh(&[2, 3, 4]);
        let two_links = [
            (addr(3).as_str(), "outbound"),
            (addr(3).as_str(), "inbound"),
            (addr(4).as_str(), "outbound"),
        ]
        .map(|(a, d)| (a.to_string(), d));
        let two_links: Vec<(&str, &str)> =
            two_links.iter().map(|(a, d)| (a.as_str(), *d)).collect();
        replace(&mut answers, &url(2), answer(&addr(2), true, &two_links));
        let (m, _) = build(answers);
        assert_eq!(m.cells[0][1], Duplicate(2));
        assert_eq!(m.cells[1][0], Inbound);
        // 2 has both directions with 3: the inbound one was dialed by the higher address.
        assert_eq!(m.summary, summary(2, 3, 1, 1, 0));
        assert_eq!(Duplicate(2).symbol(), "2");
        assert_eq!(Duplicate(12).symbol(), "+");
    }

    #[test]
    fn wrong_direction_between_masternodes() {
        let mut answers = mesh(&[9, 10]);
        // 10 dialed 9: the higher address dialed; string order would have called it right.
        replace(
            &mut answers,
            &url(9),
            answer(&addr(9), true, &[(&addr(10), "inbound")]),
        );
        replace(
            &mut answers,
            &url(10),
            answer(&addr(10), true, &[(&addr(9), "outbound")]),
        );
        let (m, _) = build(answers);
        assert_eq!(
            m.cells,
            vec![vec![Itself, WrongDirection], vec![WrongDirection, Itself]]
        );
        assert_eq!(m.summary, summary(1, 1, 0, 1, 0));
        assert!(!m.summary.healthy());
    }

    #[test]
    fn a_non_masternode_may_dial_a_lower_address() {
        let answers = vec![
            (url(9), answer(&addr(9), true, &[(&addr(10), "inbound")])),
            (url(10), answer(&addr(10), false, &[(&addr(9), "outbound")])),
        ];
        let (m, _) = build(answers);
        assert_eq!(m.cells, vec![vec![Itself, Inbound], vec![Outbound, Itself]]);
        assert_eq!(m.summary, summary(1, 1, 0, 0, 0));
        assert!(m.summary.healthy());
    }

    #[test]
    fn unreachable_node_that_the_others_no_longer_see() {
        let mut answers = mesh(&[2, 3, 4]);
        // 3 is down and the others have dropped it: its address cannot be known.
        replace(
            &mut answers,
            &url(3),
            Err("GET /consensus_info: refused".into()),
        );
        replace(
            &mut answers,
            &url(2),
            answer(&addr(2), true, &[(&addr(4), "outbound")]),
        );
        replace(
            &mut answers,
            &url(4),
            answer(&addr(4), true, &[(&addr(2), "inbound")]),
        );
        let (m, problems) = build(answers);
        assert_eq!(
            problems,
            vec![(url(3), "GET /consensus_info: refused".to_string())]
        );
        assert_eq!(
            m.cells,
            vec![
                vec![Itself, Outbound, Unknown],
                vec![Inbound, Itself, Unknown],
                vec![Unknown, Unknown, Itself],
            ]
        );
        assert_eq!(m.summary, summary(1, 3, 0, 0, 1));
        let text = m.render();
        assert!(
            text.contains("3  http://127.0.0.3:8332 (unreachable)  ?  ?  \u{b7}"),
            "{text}"
        );
    }

    #[test]
    fn unreachable_node_is_placed_by_the_others_view() {
        let mut answers = mesh(&[2, 3, 4]);
        // 3's status endpoint is down but its links are up: the others still list it.
        replace(&mut answers, &url(3), Err("timeout".into()));
        let (m, problems) = build(answers);
        assert_eq!(problems.len(), 1);
        assert_eq!(m.nodes[1].addr.unwrap().to_string(), addr(3));
        assert_eq!(m.cells[1], vec![Unknown, Itself, Unknown]);
        assert_eq!(m.cells[0][1], Outbound);
        assert_eq!(m.cells[2][1], Inbound);
        assert_eq!(m.summary, summary(3, 3, 0, 0, 1));
        assert!(!m.summary.healthy());
        assert!(m
            .render()
            .contains("127.0.0.3:24100 (unreachable: http://127.0.0.3:8332)"));
    }

    #[test]
    fn node_without_an_address_and_the_same_node_twice() {
        let mut answers = mesh(&[2, 3]);
        answers.push(("http://localhost:8332".into(), answers[0].1.clone()));
        let mut nameless = answer(&addr(7), true, &[]);
        if let Ok((info, _)) = &mut nameless {
            info.local_address = None;
        }
        answers.push((url(7), nameless));
        let (m, problems) = build(answers);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].1.contains("same node as http://127.0.0.2:8332"));
        assert!(problems[1].1.contains("does not know its P2P address"));
        assert_eq!(m.nodes.len(), 3);
        assert_eq!(m.summary, summary(1, 3, 0, 0, 1));
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host_ip("http://127.0.0.3:8332/"),
            Some([127, 0, 0, 3].into())
        );
        assert_eq!(url_host_ip("127.0.0.3:8332"), Some([127, 0, 0, 3].into()));
        assert_eq!(url_host_ip("http://u@[::1]:8332"), "::1".parse().ok());
        assert_eq!(url_host_ip("http://localhost:8332"), None);
    }

    #[test]
    fn single_node_and_empty_cases() {
        let (m, _) = build(mesh(&[2]));
        assert_eq!(m.summary, summary(0, 0, 0, 0, 0));
        assert!(m.summary.healthy());
        let (m, _) = build(vec![(url(2), Err("refused".into()))]);
        assert!(!m.summary.healthy());
    }
}
