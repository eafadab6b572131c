// Independent verifier for rebuild's Sigstore bundles (tests/test_sign.py,
// tests/integration/test_keyless.py), with @sigstore/verify.
//
// usage: node verify.mjs BUNDLE.json PUBKEY.pem
//        node verify.mjs BUNDLE.json --trusted-root ROOT.json
//             --certificate-identity IDENTITY --certificate-oidc-issuer ISSUER
// prints {"ok": bool, "payloadType": string|null, "error": string|null}; exits 0 when the
// bundle verifies, 1 when it does not, 2 on a usage error.
//
// With a key (key-signed bundles): the trusted root is empty and every threshold is 0, because
// such a bundle carries no certificate, log entry or timestamp.
// Keyless, with --trusted-root (Sigstore's TrustedRoot JSON): the certificate must chain to a
// trusted Fulcio CA and carry an SCT from a trusted CT log, the bundle must hold a Rekor entry
// whose signed promise and inclusion proof (checkpoint) verify against a trusted log, and the
// integrated time must fall within the certificate's validity: every threshold is 1. The
// certificate's SAN must equal IDENTITY and its OIDC issuer extension ISSUER.
//
// It checks the DSSE signature only (as @sigstore/verify does): the payload type and the
// statement's subjects are for the caller to check.
// The top-level `sigstore.verify()` is not used: it fetches the public-good root over TUF.
import { createHash, createPublicKey } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { bundleFromJSON } from "@sigstore/bundle";
// @sigstore/bundle's own dependency, at node_modules/@sigstore/protobuf-specs in the lockfile:
// it turns the JSON form of a TrustedRoot (base64 bytes, RFC 3339 times) into the objects
// that toTrustMaterial expects, as it does for bundles.
import { TrustedRoot } from "@sigstore/protobuf-specs";
import { Verifier, toSignedEntity, toTrustMaterial } from "@sigstore/verify";

const EMPTY_TRUSTED_ROOT = {
  mediaType: "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
  tlogs: [],
  certificateAuthorities: [],
  ctlogs: [],
  timestampAuthorities: [],
};

function readBundle(bundlePath) {
  return bundleFromJSON(JSON.parse(readFileSync(bundlePath, "utf8")));
}

function verifyWithKey(bundle, keyPath) {
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
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

function verifyKeyless(bundle, rootPath, identity, issuer) {
  const root = TrustedRoot.fromJSON(JSON.parse(readFileSync(rootPath, "utf8")));
  const verifier = new Verifier(toTrustMaterial(root), {
    tlogThreshold: 1,
    ctlogThreshold: 1,
    timestampThreshold: 1,
  });
  // @sigstore/verify matches the SAN as a regular expression; anchor and escape it so that
  // only the exact identity passes (as sigstore-python and cosign --certificate-identity do).
  verifier.verify(toSignedEntity(bundle), {
    subjectAlternativeName: `^${escapeRegExp(identity)}$`,
    extensions: { issuer },
  });
}

function usage(message) {
  console.error(`${message}\nusage: node verify.mjs BUNDLE.json PUBKEY.pem\n` +
    "       node verify.mjs BUNDLE.json --trusted-root ROOT.json " +
    "--certificate-identity ID --certificate-oidc-issuer ISSUER");
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    allowPositionals: true,
    options: {
      "trusted-root": { type: "string" },
      "certificate-identity": { type: "string" },
      "certificate-oidc-issuer": { type: "string" },
    },
  });
} catch (e) {
  usage(e.message);
}
const { values, positionals } = args;
const keyless = values["trusted-root"] !== undefined;
if (keyless) {
  if (positionals.length !== 1 || !values["certificate-identity"] ||
      !values["certificate-oidc-issuer"]) {
    usage("--trusted-root takes one BUNDLE and needs --certificate-identity and " +
          "--certificate-oidc-issuer");
  }
} else if (positionals.length !== 2) {
  usage("give BUNDLE.json and PUBKEY.pem, or --trusted-root for a keyless bundle");
}

let payloadType = null;
let result;
try {
  const bundle = readBundle(positionals[0]);
  payloadType = bundle.content?.dsseEnvelope?.payloadType ?? null;
  if (keyless) {
    verifyKeyless(bundle, values["trusted-root"], values["certificate-identity"],
                  values["certificate-oidc-issuer"]);
  } else {
    verifyWithKey(bundle, positionals[1]);
  }
  result = { ok: true, payloadType, error: null };
} catch (e) {
  result = { ok: false, payloadType, error: `${e.name}: ${e.message}` };
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
