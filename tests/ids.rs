//! The kernel side numbers probes; the ABI names them. The two lists must be the same.

#[test]
fn kernel_probe_ids_follow_the_abi() {
    let abi: Vec<&str> = usdt_markers::PROBES.iter().map(|p| p.name).collect();
    assert_eq!(abi, eventflux_probe_common::probe::NAMES.to_vec());
}
