//! Trust learnt from FreeSWITCH: its event socket (`esl`: the framing;
//! `client`: the worker), the registration events and listing, and the
//! bounded registry of what they say (`registrations`), and who owns
//! the local socket the password would go to (`peer`). The daemon turns
//! the registry into the kernel's trusted map.
pub mod client;
pub mod esl;
pub mod operator;
pub mod overload;
pub mod peer;
pub mod registrations;
