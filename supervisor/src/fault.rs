//! Injected faults as the command line (`--inject-fault`) and the HTTP front's test
//! header give them: `KIND@PHASE`, sizes read as byte sizes (`alloc:2GiB@load`).

use estimate::Bytes;
use protocol::Fault;

/// Parses `KIND@PHASE` (see docs/CONTRACT.md, "Fault injection").
pub fn parse_fault(s: &str) -> Result<Fault, String> {
    Fault::parse(s, |size| size.parse::<Bytes>().ok().map(|b| b.0))
}
