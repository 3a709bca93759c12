#!/usr/bin/env bash
# Deployment check (Flower >= 1.42: one HTTP API per SuperLink), everything on 127.0.0.1, telemetry off:
# - a throwaway CA and a server certificate for 127.0.0.1/localhost, and three SuperNode key pairs
#   (EC P-384, OpenSSH format) are made in a temp dir;
# - one SuperLink with TLS (Fleet, Control and Runtime APIs) and SuperNode authentication enabled;
#   two of the three public keys are registered with `flwr supernode register` (over TLS);
# - two SuperNodes (TLS, registered keys) and two rounds of E-3SFC with `flwr run` (TLS);
# - a third SuperNode with the key that was NOT registered must be refused by the SuperLink;
# then every process is stopped.
# Usage: scripts/flower-deploy-check.sh OUT_DIR [BIN_DIR]
#   (exit 0 when summary.json was written and the unregistered SuperNode was refused)
set -uo pipefail
out=$(realpath -m "$1"); bin=$(realpath "${2:-.venv/bin}")
work=$(mktemp -d)
export PATH="$bin:$PATH" FLWR_HOME="$work/flwr-home" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0
mkdir -p "$FLWR_HOME" "$work/certs" "$work/keys"
echo "logs in $work"

# CA, server certificate (SAN 127.0.0.1 + localhost) and SuperNode keys, with `cryptography` (a Flower dependency)
"$bin/python" - "$work/certs" "$work/keys" <<'PY' || { echo "flower deployment check failed: could not make certificates/keys"; exit 1; }
import datetime, ipaddress, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

certs, keys = Path(sys.argv[1]), Path(sys.argv[2])
now = datetime.datetime.now(datetime.timezone.utc)
pem = serialization.Encoding.PEM
def write_key(key, path):
    path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)
def cert(subject, issuer, pub, signer, issuer_pub, ca):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    else:
        b = (b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return b.sign(signer, hashes.SHA256())

name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
ca_key, srv_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
ca = cert(name("e3sfc test CA"), name("e3sfc test CA"), ca_key.public_key(), ca_key, ca_key.public_key(), True)
srv = cert(name("127.0.0.1"), ca.subject, srv_key.public_key(), ca_key, ca_key.public_key(), False)
(certs / "ca.crt").write_bytes(ca.public_bytes(pem))
(certs / "server.pem").write_bytes(srv.public_bytes(pem))
write_key(ca_key, certs / "ca.key")
write_key(srv_key, certs / "server.key")
for i in range(3):  # node0, node1: registered below; node2: never registered
    k = ec.generate_private_key(ec.SECP384R1())
    (keys / f"node{i}").write_bytes(k.private_bytes(pem, serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption()))
    (keys / f"node{i}").chmod(0o600)
    (keys / f"node{i}.pub").write_bytes(k.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                     serialization.PublicFormat.OpenSSH))
PY
ca="$work/certs/ca.crt"

# the flwr CLI talks TLS to the SuperLink, trusting our CA (no `insecure`)
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "e3sfc-local"

[superlink.e3sfc-local]
address = "127.0.0.1:9190"
root-certificates = "$ca"
TOML
pids=()
# each service runs in its own process group (setsid), so that the SuperExec and app processes it
# spawns are stopped with it
cleanup() {
  for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null; done; sleep 2
  for p in "${pids[@]}"; do kill -9 -- "-$p" 2>/dev/null; done
}
trap cleanup EXIT
fail() {
  echo "flower deployment check failed ($1); logs:"
  for f in "$work"/*.log; do echo "== $f"; head -n 40 "$f"; done
  exit 1
}
(cd "$work" && exec setsid "$bin/flower-superlink" --disable-runtime-dependency-installation \
   --ssl-ca-certfile "$ca" --ssl-certfile "$work/certs/server.pem" --ssl-keyfile "$work/certs/server.key" \
   --enable-supernode-auth \
   --host 127.0.0.1 --port 9190 --database :flwr-in-memory: \
   > "$work/superlink.log" 2>&1) &
pids+=($!)

# register node0 and node1 (also waits, at most 60 s, for the SuperLink's Control API to answer over TLS)
deadline=$((SECONDS + 60))
for i in 0 1; do
  until timeout 30 "$bin/flwr" supernode register "$work/keys/node$i.pub" e3sfc-local --name "node$i" \
          >> "$work/register.log" 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "could not register the key of node$i"
    sleep 2
  done
done

supernode() {  # supernode N PORT NODE_CONFIG
  (cd "$work" && exec setsid "$bin/flower-supernode" --root-certificates "$ca" --superlink 127.0.0.1:9190 \
     --auth-supernode-private-key "$work/keys/node$1" \
     --host 127.0.0.1 --port "$2" --node-config "$3" > "$work/supernode$1.log" 2>&1) &
  pids+=($!)
}
supernode 0 9094 "partition-id=0 num-partitions=2"
supernode 1 9095 "partition-id=1 num-partitions=2"
# the intruder: a valid key pair the SuperLink does not know; if it got in, the ServerApp would see
# three nodes and one serving partition 2
supernode 2 9096 "partition-id=2 num-partitions=3"
intruder=${pids[-1]}
sleep 3
timeout 300 "$bin/flwr" run . e3sfc-local --stream --run-config \
  "method=\"e3sfc\" dataset=\"digits\" clients=2 rounds=2 batch-size=32 lr=0.05 steps=3 out=\"$out\"" \
  > "$work/flwr-run.log" 2>&1
rc=$?
for i in $(seq 1 60); do [ -f "$out/summary.json" ] && break; sleep 1; done
[ -f "$out/summary.json" ] || fail "flwr run exit $rc, no summary.json"

# TLS was on: the SuperLink served HTTPS only (the CLI and the SuperNodes connected with our CA)
grep -q "running on https://127.0.0.1:9190" "$work/superlink.log" || fail "the SuperLink did not serve HTTPS"
# the unregistered SuperNode must have been refused: the SuperLink rejects its activation (HTTP 412,
# "No SuperNode found with the given public key"), the SuperNode exits (Flower exit code 305), and
# only the two registered nodes were ever activated
refusal='Failed to activate SuperNode'
for i in $(seq 1 30); do
  grep -q "$refusal" "$work/supernode2.log" && ! kill -0 "$intruder" 2>/dev/null && break
  sleep 1
done
activated=$(grep -cF "[Fleet.ActivateNode] Activated node_id" "$work/superlink.log")
if ! grep -q "$refusal" "$work/supernode2.log" || kill -0 "$intruder" 2>/dev/null \
   || ! grep -q "No SuperNode found with the given public key" "$work/superlink.log" || [ "$activated" != 2 ]; then
  fail "the SuperNode with an unregistered key was NOT refused ($activated nodes activated)"
fi
echo "unregistered supernode refused: $(grep -m1 -e "$refusal" "$work/supernode2.log" | sed 's/\x1b\[[0-9;]*m//g' | tr -s ' ')" \
  "(SuperLink: No SuperNode found with the given public key; $activated registered nodes activated)"
echo "flower deployment check: $(cat "$out/summary.json" | tr -d '\n ' | cut -c1-200)"
