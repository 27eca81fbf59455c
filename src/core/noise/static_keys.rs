//! This node's Noise static key, and the work a handshake would otherwise
//! redo every time (issue 16: ≥ 10,000 handshakes/s per core).
//!
//! An IK handshake costs the responder six X25519 operations through
//! snow's default primitive: deriving its own static public key from the
//! secret, `es`, `ss`, a fresh ephemeral key, `ee` and `se`. Two of them
//! never change between handshakes with the same peer:
//!
//! - the static public key is derived once, in [`NoiseStatic::new`];
//! - `ss`, the static-static Diffie-Hellman with a trusted peer, is
//!   computed once when the peer is added ([`NoiseStatic::add_peer`]) and
//!   looked up by the peer's static key (WireGuard keeps the same value per
//!   peer). A key that is not in the table (no trusted peer's) is computed
//!   as before, so strangers' initiations are answered the same way as
//!   ever: at a cost, and after mac1 and the cookie checks.
//!
//! [`CachedDh25519`] is the snow `Dh` that uses both; the core's resolver
//! ([`super::resolver::SeededResolver`]) hands it to every handshake of this node.
//! Its X25519 is aws-lc-rs's (AWS-LC, formally verified and with assembly
//! for x86-64 and aarch64): one ladder takes 28 µs on the project's VM
//! against 71 µs for curve25519-dalek's, and the ladders are most of a
//! handshake. The values match snow's own primitive bit for bit (tested),
//! except that a shared secret of all zeros (a low-order public key) is an
//! error, as in WireGuard, where snow would go on with it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use snow::types::{Dh, Random};
use zeroize::Zeroizing;

/// X25519 keys and shared secrets are 32 bytes.
const KEY_LEN: usize = 32;

/// Static-static shared secrets by the peer's static public key.
type SharedByPeer = HashMap<[u8; KEY_LEN], Zeroizing<[u8; KEY_LEN]>>;

/// The node's static key pair and its precomputed static-static secrets.
/// Cloning shares the table.
#[derive(Clone)]
pub struct NoiseStatic {
    inner: Arc<StaticInner>,
}

struct StaticInner {
    secret: Zeroizing<[u8; KEY_LEN]>,
    /// The same secret as the X25519 implementation holds it (or `None`
    /// if it refused the bytes: then every DH of this key fails).
    key: Option<PrivateKey>,
    public: [u8; KEY_LEN],
    /// Written when peers are added or removed, read during handshakes;
    /// the core is single-threaded, so the lock is never contended.
    shared: RwLock<SharedByPeer>,
}

impl std::fmt::Debug for NoiseStatic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseStatic")
            .field("public", &self.inner.public)
            .finish_non_exhaustive()
    }
}

impl NoiseStatic {
    /// The key pair of `secret` (a clamped or unclamped X25519 secret), with
    /// no peer precomputed yet.
    pub fn new(secret: &[u8; KEY_LEN]) -> Self {
        let (key, public) = x25519_key(secret).unzip();
        Self {
            inner: Arc::new(StaticInner {
                secret: Zeroizing::new(*secret),
                key,
                public: public.unwrap_or([0; KEY_LEN]),
                shared: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The secret key.
    pub fn secret(&self) -> &[u8; KEY_LEN] {
        &self.inner.secret
    }

    /// The public key.
    pub fn public(&self) -> &[u8; KEY_LEN] {
        &self.inner.public
    }

    /// Computes the static-static secret with a peer now, so that its
    /// handshakes skip it. One X25519 operation; a peer added twice keeps
    /// its value.
    pub fn add_peer(&self, peer_public: &[u8; KEY_LEN]) {
        let Some(shared) = self
            .inner
            .key
            .as_ref()
            .and_then(|key| x25519(key, peer_public))
        else {
            // A low-order key: its handshakes fail, precomputed or not.
            return;
        };
        self.write_table()
            .entry(*peer_public)
            .or_insert_with(|| Zeroizing::new(shared));
    }

    /// Forgets a peer's static-static secret (wiped).
    pub fn remove_peer(&self, peer_public: &[u8; KEY_LEN]) {
        self.write_table().remove(peer_public);
    }

    /// How many peers have a precomputed secret.
    pub fn precomputed_peers(&self) -> usize {
        self.read_table().len()
    }

    /// The DH with `peer_public`: from the table when precomputed.
    fn static_dh(&self, peer_public: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
        if let Some(shared) = self.read_table().get(peer_public) {
            return Some(**shared);
        }
        x25519(self.inner.key.as_ref()?, peer_public)
    }

    fn read_table(&self) -> std::sync::RwLockReadGuard<'_, SharedByPeer> {
        // A panic while the lock was held cannot leave the map half
        // written (every write is one insert or remove): keep using it.
        self.inner
            .shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_table(&self) -> std::sync::RwLockWriteGuard<'_, SharedByPeer> {
        self.inner
            .shared
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The X25519 key of `secret` (clamped, RFC 7748) and its public key.
fn x25519_key(secret: &[u8; KEY_LEN]) -> Option<(PrivateKey, [u8; KEY_LEN])> {
    let key = PrivateKey::from_private_key(&X25519, secret).ok()?;
    let public = key.compute_public_key().ok()?.as_ref().try_into().ok()?;
    Some((key, public))
}

/// X25519 of `key` and `public`; `None` for a shared secret of all zeros
/// (`public` of low order).
fn x25519(key: &PrivateKey, public: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
    agreement::agree(key, UnparsedPublicKey::new(&X25519, public), (), |shared| {
        shared.try_into().map_err(|_| ())
    })
    .ok()
}

/// snow's `25519` primitive with this node's shortcuts: when snow sets the
/// node's own static secret, the public key and the precomputed
/// static-static secrets come from [`NoiseStatic`]; every other key
/// (ephemerals, another secret) is computed as snow would.
pub struct CachedDh25519 {
    statics: Option<NoiseStatic>,
    /// Whether the key set is the node's static key.
    is_node_static: bool,
    secret: Zeroizing<[u8; KEY_LEN]>,
    /// The secret as the X25519 implementation holds it (`None`: not set,
    /// the node's static key, or refused).
    key: Option<PrivateKey>,
    public: [u8; KEY_LEN],
}

impl CachedDh25519 {
    /// A primitive with the shortcuts of `statics` (none: plain X25519).
    pub fn new(statics: Option<NoiseStatic>) -> Self {
        Self {
            statics,
            is_node_static: false,
            secret: Zeroizing::new([0; KEY_LEN]),
            key: None,
            public: [0; KEY_LEN],
        }
    }
}

impl CachedDh25519 {
    /// Takes `secret` as a key other than the node's static one.
    fn set_key(&mut self, secret: &[u8; KEY_LEN]) {
        self.is_node_static = false;
        let (key, public) = x25519_key(secret).unzip();
        self.key = key;
        self.public = public.unwrap_or([0; KEY_LEN]);
    }
}

impl Dh for CachedDh25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        KEY_LEN
    }

    fn priv_len(&self) -> usize {
        KEY_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut secret = [0u8; KEY_LEN];
        let len = privkey.len().min(KEY_LEN);
        secret[..len].copy_from_slice(&privkey[..len]);
        self.secret = Zeroizing::new(secret);
        match &self.statics {
            Some(statics) if *statics.secret() == secret => {
                self.is_node_static = true;
                self.key = None;
                self.public = *statics.public();
            }
            _ => self.set_key(&secret),
        }
        secret.fill(0);
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        rng.try_fill_bytes(secret.as_mut())?;
        self.set_key(&secret);
        self.secret = secret;
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.secret.as_ref()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let peer: [u8; KEY_LEN] = pubkey
            .get(..KEY_LEN)
            .and_then(|key| key.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = match &self.statics {
            Some(statics) if self.is_node_static => statics.static_dh(&peer),
            _ => self.key.as_ref().and_then(|key| x25519(key, &peer)),
        }
        .ok_or(snow::Error::Dh)?;
        let out = out.get_mut(..KEY_LEN).ok_or(snow::Error::Dh)?;
        out.copy_from_slice(&shared);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::montgomery::MontgomeryPoint;
    use snow::params::DHChoice;
    use snow::resolvers::{CryptoResolver, DefaultResolver};

    fn snow_dh(secret: &[u8; 32], public: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("25519");
        dh.set(secret);
        let mut out = [0u8; 32];
        dh.dh(public, &mut out).expect("dh");
        let own: [u8; 32] = dh.pubkey().try_into().expect("32 bytes");
        (own, out)
    }

    #[test]
    fn cached_and_uncached_values_equal_snows() {
        let node = NoiseStatic::new(&[7; 32]);
        let peer = MontgomeryPoint::mul_base_clamped([9; 32]).to_bytes();
        let stranger = MontgomeryPoint::mul_base_clamped([11; 32]).to_bytes();
        node.add_peer(&peer);
        assert_eq!(node.precomputed_peers(), 1);
        for remote in [peer, stranger] {
            let (snow_public, snow_shared) = snow_dh(&[7; 32], &remote);
            let mut dh = CachedDh25519::new(Some(node.clone()));
            dh.set(&[7; 32]);
            assert!(dh.is_node_static);
            assert_eq!(dh.pubkey(), snow_public);
            let mut out = [0u8; 32];
            dh.dh(&remote, &mut out).expect("dh");
            assert_eq!(out, snow_shared);
        }
        node.remove_peer(&peer);
        assert_eq!(node.precomputed_peers(), 0);
    }

    #[test]
    fn other_secrets_and_short_keys_are_handled_like_snow() {
        let node = NoiseStatic::new(&[7; 32]);
        let mut dh = CachedDh25519::new(Some(node));
        dh.set(&[8; 32]);
        assert!(!dh.is_node_static);
        let remote = MontgomeryPoint::mul_base_clamped([9; 32]).to_bytes();
        let (snow_public, snow_shared) = snow_dh(&[8; 32], &remote);
        assert_eq!(dh.pubkey(), snow_public);
        let mut out = [0u8; 32];
        dh.dh(&remote, &mut out).expect("dh");
        assert_eq!(out, snow_shared);
        assert!(dh.dh(&remote[..31], &mut out).is_err());
        assert!(dh.dh(&remote, &mut [0u8; 16]).is_err());
    }

    #[test]
    fn low_order_public_keys_give_an_error_not_a_zero_secret() {
        let node = NoiseStatic::new(&[7; 32]);
        // Zero and one are points of small order: X25519 with them is zero.
        for low in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            node.add_peer(&low);
            assert_eq!(node.precomputed_peers(), 0);
            let mut dh = CachedDh25519::new(Some(node.clone()));
            dh.set(&[7; 32]);
            assert!(dh.dh(&low, &mut [0u8; 32]).is_err());
            dh.set(&[8; 32]);
            assert!(dh.dh(&low, &mut [0u8; 32]).is_err());
        }
    }
}
