//! Just enough of the `nfnetlink_queue` protocol to hold packets in an
//! iptables `NFQUEUE` and release or drop each one later: bind a queue,
//! read the id of every queued packet, send verdicts.
//!
//! This is how the harness delays and loses packets on kernels built
//! without `sch_netem` (the CI machines' is one): the kernel keeps the packet,
//! the harness only decides *when* to let it go. Pure encoding and decoding
//! here, unit-tested without sockets; the socket loop lives in `netem.rs`.

/// `NFNL_SUBSYS_QUEUE` in the high byte of a netlink message type.
const SUBSYS_QUEUE: u16 = 3 << 8;
/// `NFQNL_MSG_PACKET`: a queued packet, kernel to user.
const MSG_PACKET: u16 = SUBSYS_QUEUE;
/// `NFQNL_MSG_VERDICT`: the fate of one packet, user to kernel.
const MSG_VERDICT: u16 = SUBSYS_QUEUE | 1;
/// `NFQNL_MSG_CONFIG`: bind a queue and set its parameters.
const MSG_CONFIG: u16 = SUBSYS_QUEUE | 2;
/// `NLMSG_ERROR`: the kernel's acknowledgement (error 0) or refusal.
const NLMSG_ERROR: u16 = 2;

const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

/// `NFQA_PACKET_HDR` in a packet message.
const ATTR_PACKET_HDR: u16 = 1;
/// `NFQA_VERDICT_HDR` in a verdict message.
const ATTR_VERDICT_HDR: u16 = 2;
/// `NFQA_CFG_CMD`, `NFQA_CFG_PARAMS`, `NFQA_CFG_QUEUE_MAXLEN`.
const ATTR_CFG_CMD: u16 = 1;
const ATTR_CFG_PARAMS: u16 = 2;
const ATTR_CFG_QUEUE_MAXLEN: u16 = 3;
/// `NFQNL_CFG_CMD_BIND`.
const CMD_BIND: u8 = 1;
/// `NFQNL_COPY_META`: tell us about the packet, do not copy its bytes.
const COPY_META: u8 = 1;
/// `AF_INET`.
const PF_INET: u16 = 2;

/// What happens to a queued packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `NF_DROP`: the packet is lost, silently for its sender.
    Drop = 0,
    /// `NF_ACCEPT`: the packet continues on its way.
    Accept = 1,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Append one netfilter netlink message (header, `nfgenmsg`, attributes).
fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, queue: u16, attrs: &[(u16, &[u8])]) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]); // length, patched below
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    // nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, queue number (big endian).
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&queue.to_be_bytes());
    for (kind, payload) in attrs {
        let len = 4 + payload.len();
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len() + align4(len) - len, 0);
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// The request binding `queue` to this socket, asking for packet metadata
/// only, with room for `max_len` held packets. The kernel acknowledges it.
pub(crate) fn bind_request(queue: u16, max_len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cmd = vec![CMD_BIND, 0];
    cmd.extend_from_slice(&PF_INET.to_be_bytes());
    message(
        &mut out,
        MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        1,
        queue,
        &[(ATTR_CFG_CMD, &cmd)],
    );
    let mut params = 0u32.to_be_bytes().to_vec();
    params.push(COPY_META);
    message(
        &mut out,
        MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        2,
        queue,
        &[
            (ATTR_CFG_PARAMS, &params),
            (ATTR_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes()),
        ],
    );
    out
}

/// Append the verdict for packet `id` of `queue`.
pub(crate) fn push_verdict(out: &mut Vec<u8>, queue: u16, id: u32, verdict: Verdict) {
    let mut hdr = (verdict as u32).to_be_bytes().to_vec();
    hdr.extend_from_slice(&id.to_be_bytes());
    message(
        out,
        MSG_VERDICT,
        NLM_F_REQUEST,
        0,
        queue,
        &[(ATTR_VERDICT_HDR, &hdr)],
    );
}

/// What one datagram from the kernel said.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Received {
    /// Ids of newly queued packets, in order.
    pub(crate) packets: Vec<u32>,
    /// Acknowledgements: 0 for success, else a negative errno.
    pub(crate) acks: Vec<i32>,
}

/// Decode every netlink message in one datagram. Unknown messages and
/// attributes are skipped; a truncated message ends the datagram.
pub(crate) fn parse(mut buf: &[u8]) -> Received {
    let mut got = Received::default();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let body = &buf[16..len];
        match kind {
            NLMSG_ERROR if body.len() >= 4 => {
                got.acks
                    .push(i32::from_ne_bytes(body[0..4].try_into().expect("4 bytes")));
            }
            MSG_PACKET if body.len() >= 4 => {
                let mut attrs = &body[4..];
                while attrs.len() >= 4 {
                    let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                    let akind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
                    if alen < 4 || alen > attrs.len() {
                        break;
                    }
                    if akind == ATTR_PACKET_HDR && alen >= 8 {
                        got.packets
                            .push(u32::from_be_bytes(attrs[4..8].try_into().expect("4 bytes")));
                    }
                    attrs = &attrs[align4(alen).min(attrs.len())..];
                }
            }
            _ => {}
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet message as the kernel builds it: header attribute first,
    /// then others (here a 5-byte one, to exercise padding).
    fn packet_message(id: u32) -> Vec<u8> {
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&0x0800u16.to_be_bytes());
        hdr.push(3); // NF_INET_LOCAL_OUT
        let mut out = Vec::new();
        message(
            &mut out,
            MSG_PACKET,
            0,
            0,
            0,
            &[(9, &[1, 2, 3, 4, 5]), (ATTR_PACKET_HDR, &hdr)],
        );
        out
    }

    #[test]
    fn verdicts_are_well_formed_and_concatenate() {
        let mut out = Vec::new();
        push_verdict(&mut out, 7, 0x0102_0304, Verdict::Accept);
        push_verdict(&mut out, 7, 9, Verdict::Drop);
        assert_eq!(out.len(), 2 * 32);
        let first = &out[..32];
        assert_eq!(u32::from_ne_bytes(first[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes([first[4], first[5]]), MSG_VERDICT);
        assert_eq!(
            &first[18..20],
            &7u16.to_be_bytes(),
            "queue number, big endian"
        );
        assert_eq!(&first[24..28], &1u32.to_be_bytes(), "NF_ACCEPT");
        assert_eq!(&first[28..32], &[1, 2, 3, 4], "packet id, big endian");
        assert_eq!(&out[32 + 24..32 + 28], &0u32.to_be_bytes(), "NF_DROP");
    }

    #[test]
    fn bind_request_is_two_acknowledged_config_messages() {
        let req = bind_request(0, 4096);
        let first = u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize;
        assert_eq!(first % 4, 0);
        for msg in [&req[..first], &req[first..]] {
            assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), MSG_CONFIG);
            assert_eq!(
                u16::from_ne_bytes([msg[6], msg[7]]),
                NLM_F_REQUEST | NLM_F_ACK
            );
        }
        assert_eq!(&req[24..28], &[CMD_BIND, 0, 0, 2], "bind for AF_INET");
    }

    #[test]
    fn parses_packets_and_acks_from_one_datagram() {
        let mut buf = packet_message(42);
        buf.extend(packet_message(43));
        let mut ack = Vec::new();
        message(&mut ack, NLMSG_ERROR, 0, 1, 0, &[]);
        // An NLMSG_ERROR body starts with the error code (here -1, EPERM)
        // where `message` put the nfgenmsg.
        ack[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        buf.extend(ack);
        assert_eq!(
            parse(&buf),
            Received {
                packets: vec![42, 43],
                acks: vec![-1]
            }
        );
    }

    #[test]
    fn truncated_input_is_ignored_not_a_panic() {
        let buf = packet_message(5);
        for cut in 0..buf.len() {
            let _ = parse(&buf[..cut]);
        }
        assert_eq!(parse(&buf[..buf.len() - 1]).packets, Vec::<u32>::new());
    }
}
