//! Network-only position reports (§7, §8.5, §8.6): multi-cell LBS lists and WiFi scans.
//! They carry no coordinates; a cell/WiFi lookup elsewhere may turn them into a position.

use nom::bytes::complete::take;
use nom::combinator::opt;
use nom::number::complete::{be_u16, be_u24, be_u32, be_u64, be_u8};
use nom::IResult;

use super::fields::{lbs_4g, mcc_mnc, time_bcd, time_binary, wifi_ap, wifi_list};
use super::Failure;
use crate::protocol::types::{Cell, CellReport, Lbs, WifiAp};

type E<'a> = nom::error::Error<&'a [u8]>;

/// Neighbour slots in the fixed-size lists of 0x28/0x2E/0x18/0x2C/0xA1/0xA2.
const CELL_SLOTS: usize = 7;

/// 365GPS 0x17/0x69: BCD time, `n_wifi` access points, then cells with u16 ids.
/// `n_wifi` is byte 2 of the frame (where other frames keep their length).
pub(super) fn wifi_365gps(proto: u8, n_wifi: u8, c: &[u8]) -> Result<CellReport, Failure> {
    let (mut i, time) = time_bcd(c)?;
    let mut wifi = Vec::with_capacity(usize::from(n_wifi));
    for _ in 0..n_wifi {
        let (rest, ap) = wifi_ap(i)?;
        wifi.push(ap);
        i = rest;
    }
    let (i, n_cells) = be_u8::<_, E>(i)?;
    let (i, mcc) = be_u16::<_, E>(i)?;
    let (mut i, mnc) = be_u8::<_, E>(i)?;
    let mut cells = Vec::with_capacity(usize::from(n_cells));
    for _ in 0..n_cells {
        let (rest, lac) = be_u16::<_, E>(i)?;
        let (rest, ci) = be_u16::<_, E>(rest)?;
        let (rest, rssi) = be_u8::<_, E>(rest)?;
        cells.push(Cell {
            lbs: Lbs {
                mcc,
                mnc: u16::from(mnc),
                lac: u32::from(lac),
                cell: u64::from(ci),
            },
            rssi: Some(rssi),
        });
        i = rest;
    }
    Ok(CellReport {
        time,
        cells,
        wifi,
        buffered: proto == 0x17,
    })
}

/// Cell sizes of a list entry.
#[derive(Clone, Copy)]
enum Gen {
    /// LAC u16, cell u24.
    G2,
    /// LAC u32, cell u64.
    G4,
}

fn cell_entry(gen: Gen, mcc: u16, mnc: u16) -> impl Fn(&[u8]) -> IResult<&[u8], Cell> {
    move |i| {
        let (i, lac, cell) = match gen {
            Gen::G2 => {
                let (i, lac) = be_u16(i)?;
                let (i, cell) = be_u24(i)?;
                (i, u32::from(lac), u64::from(cell))
            }
            Gen::G4 => {
                let (i, lac) = be_u32(i)?;
                let (i, cell) = be_u64(i)?;
                (i, lac, cell)
            }
        };
        let (i, rssi) = be_u8(i)?;
        Ok((
            i,
            Cell {
                lbs: Lbs {
                    mcc,
                    mnc,
                    lac,
                    cell,
                },
                rssi: Some(rssi),
            },
        ))
    }
}

/// `n` list entries; empty slots (LAC and cell 0) are dropped.
fn cells(i: &[u8], gen: Gen, mcc: u16, mnc: u16, n: usize) -> IResult<&[u8], Vec<Cell>> {
    let entry = cell_entry(gen, mcc, mnc);
    let mut out = Vec::with_capacity(n);
    let mut i = i;
    for _ in 0..n {
        let (rest, cell) = entry(i)?;
        if cell.lbs.lac != 0 || cell.lbs.cell != 0 {
            out.push(cell);
        }
        i = rest;
    }
    Ok((i, out))
}

/// The fixed-slot lists: time, MCC/MNC, seven cells, timing advance, then a language word
/// (0x28, 0x2E, 0xA1) or a WiFi list (0x18, 0x2C, 0xA2 on GK310).
pub(super) fn multi_cell(proto: u8, c: &[u8]) -> Result<CellReport, Failure> {
    let gen = if matches!(proto, 0xA1 | 0xA2) {
        Gen::G4
    } else {
        Gen::G2
    };
    let (i, time) = time_binary(c)?;
    let (i, (mcc, mnc)) = mcc_mnc(i)?;
    let (i, cells) = cells(i, gen, mcc, mnc, CELL_SLOTS)?;
    let (i, _ta) = opt(be_u8::<_, E>)(i)?;
    let wifi = match proto {
        0x18 | 0x2C | 0xA2 => opt(wifi_list)(i)?.1.unwrap_or_default(),
        _ => Vec::new(),
    };
    Ok(CellReport {
        time,
        cells,
        wifi,
        buffered: false,
    })
}

/// 0xA7 LBS address request (4G): one serving cell, then a phone number and language.
pub(super) fn single_cell_4g(c: &[u8]) -> Result<CellReport, Failure> {
    let (_, lbs) = lbs_4g(c)?;
    Ok(CellReport {
        cells: vec![Cell { lbs, rssi: None }],
        ..CellReport::default()
    })
}

/// 0x24 on Wanway S20 (LEN 0x31): time, timing advance, MCC/MNC, a cell count, cells.
pub(super) fn wanway_s20(c: &[u8]) -> Result<CellReport, Failure> {
    let (i, time) = time_binary(c)?;
    let (i, _ta) = be_u8::<_, E>(i)?;
    let (i, (mcc, mnc)) = mcc_mnc(i)?;
    let (i, n) = be_u8::<_, E>(i)?;
    let (_, cells) = cells(i, Gen::G2, mcc, mnc, usize::from(n))?;
    Ok(CellReport {
        time,
        cells,
        ..CellReport::default()
    })
}

/// 0xF3 WiFi 4: binary time, a count, then per access point 2 bytes and the MAC.
pub(super) fn wifi_0xf3(c: &[u8]) -> Result<CellReport, Failure> {
    let (mut i, time) = time_binary(c)?;
    let (rest, n) = be_u8::<_, E>(i)?;
    i = rest;
    let mut wifi = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let (rest, prefix) = take::<_, _, E>(2usize)(i)?;
        let (rest, mac) = take::<_, _, E>(6usize)(rest)?;
        wifi.push(WifiAp {
            mac: <[u8; 6]>::try_from(mac).unwrap_or_default(),
            rssi: prefix.last().copied().unwrap_or(0),
        });
        i = rest;
    }
    Ok(CellReport {
        time,
        wifi,
        ..CellReport::default()
    })
}
