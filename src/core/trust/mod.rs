//! Trust: the store of trusted peers and their policies (`store`), sealed
//! trust requests and fleet endorsements (`request`), and the mailbox of
//! received requests waiting for an operator (`pending`).

pub mod pending;
pub mod request;
pub mod store;
