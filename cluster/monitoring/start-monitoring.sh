#!/usr/bin/env bash
# Prometheus and Grafana on the head node's host (AWS cluster launcher), both bound to 127.0.0.1: reach them
# through port-forwards only. Run from your workstation once the cluster is up:
#   ray exec cluster/aws/saber-cluster.yaml --run-env=host \
#     'docker exec saber cat /home/ray/saber/cluster/monitoring/start-monitoring.sh | bash'
# The configs come out of the running Ray container (the image), so the head needs no checkout.
set -euo pipefail
conf="$HOME/saber-monitoring"
rm -rf "$conf"
docker cp saber:/home/ray/saber/cluster/monitoring "$conf"
mkdir -p "$conf/dashboards" && cp "$conf/grafana-saber.json" "$conf/dashboards/"
docker rm -f saber-prometheus saber-grafana >/dev/null 2>&1 || true
docker run -d --restart unless-stopped --name saber-prometheus --network host \
  -v /tmp/ray:/tmp/ray:ro -v "$conf":/etc/saber:ro prom/prometheus:v3.5.0 \
  --config.file=/etc/saber/prometheus.yml --web.listen-address=127.0.0.1:9090
# Anonymous viewers and embedding, so the Ray dashboard's Metrics tab can show the panels; safe only because
# Grafana listens on 127.0.0.1 (the admin password is asked to be changed at first login).
docker run -d --restart unless-stopped --name saber-grafana --network host \
  -e GF_SERVER_HTTP_ADDR=127.0.0.1 -e GF_SECURITY_ALLOW_EMBEDDING=true \
  -e GF_AUTH_ANONYMOUS_ENABLED=true -e GF_AUTH_ANONYMOUS_ORG_ROLE=Viewer \
  -v /tmp/ray:/tmp/ray:ro -v "$conf":/etc/saber:ro \
  -v "$conf/grafana/provisioning":/etc/grafana/provisioning:ro grafana/grafana-oss:12.1.0
echo "Prometheus on 127.0.0.1:9090, Grafana on 127.0.0.1:3000 (head node)"
