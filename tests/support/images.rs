//! Tiny boot media built by the tests: a 512-byte x86 boot sector that prints a marker on
//! COM1 and halts, as a floppy image, a raw disk image and an El Torito ISO (no emulation).
//! SeaBIOS boots each; the marker in the serial log says which medium the firmware chose.

use std::path::Path;

/// Real-mode code, position-independent (runs at 0000:7C00 from disks and floppies, at
/// 07C0:0000 from an El Torito cdrom), then `marker\r\n` and a NUL.
fn boot_sector(marker: &str) -> Vec<u8> {
    let mut code = vec![
        0x0E, // push cs
        0x1F, // pop ds
        0xE8, 0x00, 0x00, // call next
        0x5E, // next: pop si
        0x83, 0xC6, 0x13, // add si, msg - next (24 - 5)
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8 (COM1)
        0xAC, // loop: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp loop
        0xFA, // done: cli
        0xF4, // hlt
        0xEB, 0xFD, // jmp hlt
    ];
    assert_eq!(code.len(), 24);
    code.extend_from_slice(marker.as_bytes());
    code.extend_from_slice(b"\r\n\0");
    assert!(code.len() <= 510, "marker too long");
    code.resize(512, 0);
    code[510] = 0x55;
    code[511] = 0xAA;
    code
}

/// A 1.44 MB floppy image whose boot sector prints `marker`.
pub fn floppy(path: &Path, marker: &str) {
    let mut img = boot_sector(marker);
    img.resize(1_474_560, 0);
    std::fs::write(path, img).unwrap();
}

/// A 1 MiB raw disk image whose MBR prints `marker`.
pub fn disk(path: &Path, marker: &str) {
    let mut img = boot_sector(marker);
    img.resize(1 << 20, 0);
    std::fs::write(path, img).unwrap();
}

/// An ISO 9660 image with an El Torito boot catalog (no emulation, 4 virtual sectors loaded)
/// whose boot image prints `marker`.
pub fn iso(path: &Path, marker: &str) {
    const S: usize = 2048;
    const SECTORS: u32 = 24;
    let mut iso = vec![0u8; S * SECTORS as usize];
    let descriptor = |iso: &mut Vec<u8>, n: usize, kind: u8| {
        let d = &mut iso[n * S..(n + 1) * S];
        d[0] = kind;
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
    };
    // Primary volume descriptor: the volume size, both-endian.
    descriptor(&mut iso, 16, 1);
    iso[16 * S + 80..16 * S + 84].copy_from_slice(&SECTORS.to_le_bytes());
    iso[16 * S + 84..16 * S + 88].copy_from_slice(&SECTORS.to_be_bytes());
    // Boot record: El Torito, the catalog in sector 19.
    descriptor(&mut iso, 17, 0);
    iso[17 * S + 7..17 * S + 30].copy_from_slice(b"EL TORITO SPECIFICATION");
    iso[17 * S + 0x47..17 * S + 0x4B].copy_from_slice(&19u32.to_le_bytes());
    descriptor(&mut iso, 18, 255);
    // Catalog: validation entry (words sum to 0), then the bootable default entry.
    let cat = &mut iso[19 * S..20 * S];
    cat[0] = 1;
    cat[0x1E] = 0x55;
    cat[0x1F] = 0xAA;
    let sum = cat[..32].chunks(2).fold(0u16, |a, w| {
        a.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    cat[0x1C..0x1E].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    cat[0x20] = 0x88; // bootable, no emulation
    cat[0x26..0x28].copy_from_slice(&4u16.to_le_bytes());
    cat[0x28..0x2C].copy_from_slice(&20u32.to_le_bytes());
    iso[20 * S..20 * S + 512].copy_from_slice(&boot_sector(marker));
    std::fs::write(path, iso).unwrap();
}
