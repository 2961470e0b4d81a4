//! The display part of the command line: VNC (address, interface, unix socket, TLS, x509,
//! password set later over QMP) and every SPICE option.
//!
//! Invariant: pure, like the rest of `cmdline`.

use super::{qemu_escape, Launch};
use crate::model::field_error::FieldError;
use crate::model::hvparams::key;

pub(super) fn vnc_args(
    l: &Launch<'_>,
    bind: &str,
    a: &mut Vec<String>,
    errs: &mut Vec<FieldError>,
) {
    let hv = l.hv;
    if bind.starts_with('/') {
        a.extend([
            "-vnc".into(),
            format!("unix:{}/{}.vnc", qemu_escape(bind), l.spec.name),
        ]);
        return;
    }
    let addr = l
        .host
        .vnc_address
        .clone()
        .unwrap_or_else(|| bind.to_string());
    let Some(port) = l.spec.network_port.filter(|p| *p > 5900) else {
        errs.push(FieldError::new(
            "network_port",
            format!("{:?}", l.spec.network_port),
            "must be set above 5900 when vnc_bind_address is an address (display = port - 5900)",
        ));
        return;
    };
    let display = port - 5900;
    let mut arg = if addr == "0.0.0.0" {
        format!(":{display}")
    } else if addr.contains(':') {
        format!("[{addr}]:{display}")
    } else {
        format!("{addr}:{display}")
    };
    if hv.bool(key::VNC_TLS) {
        let x509 = hv.str(key::VNC_X509_PATH);
        let obj = if x509.is_empty() {
            "tls-creds-anon,id=vnctls0,endpoint=server".to_string()
        } else {
            format!(
                "tls-creds-x509,id=vnctls0,endpoint=server,dir={},verify-peer={}",
                qemu_escape(x509),
                if hv.bool(key::VNC_X509_VERIFY) {
                    "yes"
                } else {
                    "no"
                }
            )
        };
        a.extend(["-object".into(), obj]);
        arg.push_str(",tls-creds=vnctls0");
    }
    if !hv.str(key::VNC_PASSWORD_FILE).is_empty() {
        arg.push_str(",password=on");
    }
    a.extend(["-vnc".into(), arg]);
}

pub(super) fn spice_args(l: &Launch<'_>, a: &mut Vec<String>, errs: &mut Vec<FieldError>) {
    let hv = l.hv;
    if !l.caps.options.spice {
        errs.push(FieldError::new(
            "spice_bind",
            format!("{:?}", hv.str(key::SPICE_BIND)),
            "this QEMU has no SPICE support (-spice is not in its --help)",
        ));
        return;
    }
    let addr = l
        .host
        .spice_address
        .clone()
        .unwrap_or_else(|| hv.str(key::SPICE_BIND).to_string());
    let Some(port) = l.spec.network_port else {
        errs.push(FieldError::new(
            "network_port",
            "null",
            "must be set when spice_bind is set",
        ));
        return;
    };
    let mut o = format!("addr={addr}");
    if hv.bool(key::SPICE_USE_TLS) {
        let dir = l
            .host
            .spice_cert_dir
            .clone()
            .unwrap_or_else(|| "/etc/kvmd/spice".into());
        o.push_str(&format!(",tls-port={port},x509-cacert-file={dir}/spice-ca.pem,x509-key-file={dir}/spice.pem,x509-cert-file={dir}/spice.pem"));
        if !hv.str(key::SPICE_TLS_CIPHERS).is_empty() {
            o.push_str(&format!(",tls-ciphers={}", hv.str(key::SPICE_TLS_CIPHERS)));
        }
    } else {
        o.push_str(&format!(",port={port}"));
    }
    match hv.int(key::SPICE_IP_VERSION) {
        4 => o.push_str(",ipv4=on"),
        6 => o.push_str(",ipv6=on"),
        _ => {}
    }
    if hv.str(key::SPICE_PASSWORD_FILE).is_empty() {
        o.push_str(",disable-ticketing=on");
    }
    for (k, opt) in [
        (key::SPICE_IMAGE_COMPRESSION, "image-compression"),
        (key::SPICE_JPEG_WAN_COMPRESSION, "jpeg-wan-compression"),
        (
            key::SPICE_ZLIB_GLZ_WAN_COMPRESSION,
            "zlib-glz-wan-compression",
        ),
        (key::SPICE_STREAMING_VIDEO, "streaming-video"),
    ] {
        if !hv.str(k).is_empty() {
            o.push_str(&format!(",{opt}={}", hv.str(k)));
        }
    }
    if !hv.bool(key::SPICE_PLAYBACK_COMPRESSION) {
        o.push_str(",playback-compression=off");
    }
    if hv.bool(key::SPICE_USE_VDAGENT) {
        a.extend([
            "-device".into(),
            "virtio-serial-pci,id=spice".into(),
            "-device".into(),
            "virtserialport,chardev=spicechannel0,name=com.redhat.spice.0".into(),
            "-chardev".into(),
            "spicevmc,id=spicechannel0,name=vdagent".into(),
        ]);
    } else {
        o.push_str(",agent-mouse=off");
    }
    a.extend(["-spice".into(), o]);
}
