//! Fuzz target: the bytes a client sends the MQTT front door after TLS. They are read packet
//! by packet as the front door reads them and checked against an agent's and a viewer's topic
//! rules. Nothing panics, and the front door's view of a packet is the broker's: a packet it
//! forwards, re-encoded as it is forwarded and read back as the broker reads it, is the same
//! packet and gets the same ruling. A topic that changed on the way would be a way around the
//! rules.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vantage_control_plane::frontdoor::{Identity, MAX_PACKET_BYTES, next_packet, police};

fuzz_target!(|bytes: &[u8]| {
    let identities = [Identity::Agent("ag-1".into()), Identity::Viewer];
    let mut buffer = BytesMut::from(bytes);
    // Each packet takes at least two bytes: the loop ends.
    while let Ok(Some(packet)) = next_packet(&mut buffer) {
        let mut out = BytesMut::new();
        if packet.write(&mut out, MAX_PACKET_BYTES).is_err() {
            continue;
        }
        let forwarded = next_packet(&mut out)
            .expect("a forwarded packet reads back")
            .expect("a forwarded packet is whole");
        assert_eq!(
            forwarded, packet,
            "a packet changed on its way to the broker"
        );
        assert!(out.is_empty(), "bytes left after a forwarded packet");
        for identity in &identities {
            assert_eq!(police(&packet, identity), police(&forwarded, identity));
        }
    }
});
