// Independent verifier for rebuild's key-signed Sigstore bundles (tests/test_sign.py).
//
// usage: node verify.mjs BUNDLE.json PUBKEY.pem
// prints {"ok": bool, "payloadType": string|null, "error": string|null}; exits 0 when the
// signature verifies with PUBKEY, 1 otherwise.
//
// It checks the DSSE signature only (as @sigstore/verify does): the payload type and the
// statement's subjects are for the caller to check. The trusted root is empty and every
// threshold is 0 because a key-signed bundle carries no certificate, log entry or timestamp.
// The top-level `sigstore.verify()` is not used: it fetches the public-good root over TUF.
import { createHash, createPublicKey } from "node:crypto";
import { readFileSync } from "node:fs";
import { bundleFromJSON } from "@sigstore/bundle";
import { Verifier, toSignedEntity, toTrustMaterial } from "@sigstore/verify";

const EMPTY_TRUSTED_ROOT = {
  mediaType: "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
  tlogs: [],
  certificateAuthorities: [],
  ctlogs: [],
  timestampAuthorities: [],
};

function verify(bundlePath, keyPath) {
  let payloadType = null;
  try {
    const bundle = bundleFromJSON(JSON.parse(readFileSync(bundlePath, "utf8")));
    payloadType = bundle.content?.dsseEnvelope?.payloadType ?? null;
    const publicKey = createPublicKey(readFileSync(keyPath));
    // rebuild's key id: sha256 hex of the DER SubjectPublicKeyInfo (rebuild/sign.py, keyid).
    const der = publicKey.export({ type: "spki", format: "der" });
    const keyid = createHash("sha256").update(der).digest("hex");
    const keyFinder = (hint) => {
      if (hint !== keyid) {
        throw new Error(`bundle names key ${hint}, not the given key ${keyid}`);
      }
      return { publicKey, validFor: () => true };
    };
    const verifier = new Verifier(toTrustMaterial(EMPTY_TRUSTED_ROOT, keyFinder), {
      tlogThreshold: 0,
      ctlogThreshold: 0,
      timestampThreshold: 0,
    });
    verifier.verify(toSignedEntity(bundle));
    return { ok: true, payloadType, error: null };
  } catch (e) {
    return { ok: false, payloadType, error: `${e.name}: ${e.message}` };
  }
}

const [bundlePath, keyPath] = process.argv.slice(2);
if (!bundlePath || !keyPath) {
  console.error("usage: node verify.mjs BUNDLE.json PUBKEY.pem");
  process.exit(2);
}
const result = verify(bundlePath, keyPath);
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
