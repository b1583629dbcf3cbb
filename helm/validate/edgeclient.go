package main

// A client of a rendered edge: it signs a connection token the way the
// chart's auth settings say a backend would (HS256 with the Secret's
// secret, or ES256 with the key behind the PEM / JWKS files, with the
// audience and issuer the edge requires), opens an SSE stream, and waits
// for a publication made through the nodes' client Service. This proves
// the chart wires keys, node addresses and ports together, end to end.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// edgeToken signs a token the edge container will accept, or returns ""
// when it is configured for anonymous clients only.
func (w *World) edgeToken(p *LocalPod, channel string) (string, error) {
	c := p.Container
	flags := map[string]string{}
	for _, a := range c.Args {
		if k, v, ok := strings.Cut(a, "="); ok {
			flags[k] = v
		}
	}
	claims := map[string]any{
		"sub":  "chart-harness",
		"exp":  time.Now().Add(10 * time.Minute).Unix(),
		"caps": []map[string]any{{"channels": []string{channel}, "allow": []string{"sub"}}},
	}
	if v := flags["--jwt-audience"]; v != "" {
		claims["aud"] = v
	}
	if v := flags["--jwt-issuer"]; v != "" {
		claims["iss"] = v
	}
	var hs256 string
	for _, e := range c.Env {
		if e.Name == "HERALD_JWT_HS256_SECRET" {
			v, err := w.envValue(p, c, e, nil)
			if err != nil {
				return "", err
			}
			hs256 = v
		}
	}
	switch {
	case hs256 != "":
		return signJWT(map[string]any{"alg": "HS256", "typ": "JWT"}, claims, func(in []byte) ([]byte, error) {
			m := hmac.New(sha256.New, []byte(hs256))
			m.Write(in)
			return m.Sum(nil), nil
		})
	case flags["--jwt-public-key-file"] != "" || flags["--jwks-file"] != "":
		return signJWT(map[string]any{"alg": "ES256", "typ": "JWT", "kid": "ci"}, claims, func(in []byte) ([]byte, error) {
			return signES256(w.ec, in)
		})
	}
	return "", nil
}

func signJWT(header, claims map[string]any, sign func([]byte) ([]byte, error)) (string, error) {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	sig, err := sign([]byte(in))
	if err != nil {
		return "", err
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// signES256 returns the JOSE form of an ECDSA P-256 signature (r || s).
func signES256(key *ecdsa.PrivateKey, in []byte) ([]byte, error) {
	sum := sha256.Sum256(in)
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}

// clientPort is the local address of the edge's client port.
func clientPort(p *LocalPod) (string, error) {
	for _, port := range p.Container.Ports {
		if port.Name == "client" {
			return p.Ports[port.ContainerPort], nil
		}
	}
	return "", fmt.Errorf("edge %s has no port named client", p.Name)
}

// deliverThroughEdge subscribes over SSE and publishes until a publication
// arrives.
func (h *harness) deliverThroughEdge(edge *LocalPod) error {
	const channel = "chart-harness"
	addr, err := clientPort(edge)
	if err != nil {
		return err
	}
	token, err := h.world.edgeToken(edge, channel)
	if err != nil {
		return err
	}
	q := url.Values{"channel": {channel}}
	how := "anonymous"
	if token != "" {
		q.Set("token", token)
		how = "with a signed token"
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/connection/sse?"+q.Encode(), nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("SSE to edge %s: %w", edge.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("SSE to edge %s (%s): %s", edge.Name, how, resp.Status)
	}
	nonce := randomHex(8)
	payload := fmt.Sprintf(`{"harness":"%s"}`, nonce)
	encoded := base64.StdEncoding.EncodeToString([]byte(payload))
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				return fmt.Errorf("SSE stream of edge %s ended before the publication arrived", edge.Name)
			}
			if strings.HasPrefix(line, "data:") && (strings.Contains(line, nonce) || strings.Contains(line, encoded)) {
				h.say("SSE client on edge %s (%s) received a publication made through the client Service", edge.Name, how)
				return nil
			}
		case <-tick.C:
			if _, err := h.cli("publish", channel, payload); err != nil {
				return err
			}
		case <-ctx.Done():
			return fmt.Errorf("edge %s: no publication within %s", edge.Name, h.timeout)
		}
	}
}

// checkDeliveryPlane, when the render enables the QUIC plane, reads every
// node's metrics after a delivery: no node may have refused a peer's
// certificate, and the publications that reached the edge's node from the
// leader must have crossed the plane (unless that node is the leader).
func (h *harness) checkDeliveryPlane() error {
	quic := false
	for _, p := range h.nodes[0].Container.Ports {
		quic = quic || p.Protocol == corev1.ProtocolUDP
	}
	if !quic {
		return nil
	}
	out, err := h.cli("status")
	if err != nil {
		return err
	}
	if m := regexp.MustCompile(`^node (\d+): \w+, leader (\d+)`).FindStringSubmatch(out); m != nil && m[1] == m[2] {
		h.say("QUIC plane up with the rendered TLS (no transfer to check: the edge's node is the leader)")
		return nil
	}
	// The edge's subscription reaches the leader through Raft; until it
	// has, publications reach the edge's node by replication alone. Keep
	// publishing until one crosses the plane.
	deadline := time.Now().Add(h.timeout)
	for {
		var refused, received float64
		for _, p := range h.nodes {
			m, err := scrapeMetrics(p)
			if err != nil {
				return err
			}
			refused += m["herald_peer_refused_total"]
			received += m["herald_peer_received_publications_total"]
		}
		if refused > 0 {
			return fmt.Errorf("QUIC plane: nodes refused %v peer handshakes (the rendered TLS material does not verify)", refused)
		}
		if received > 0 {
			h.say("QUIC plane: %v publication(s) crossed it under mutual TLS from the rendered certificates", received)
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("QUIC plane: no publication crossed it to the edge's node")
		}
		if _, err := h.cli("publish", "chart-harness", `{"plane":"quic"}`); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// scrapeMetrics sums every sample of each metric a pod's /metrics exposes.
func scrapeMetrics(p *LocalPod) (map[string]float64, error) {
	var addr string
	for _, port := range p.Container.Ports {
		if port.Name == "http" {
			addr = p.Ports[port.ContainerPort]
		}
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		name, _, _ := strings.Cut(fields[0], "{")
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err == nil {
			out[name] += v
		}
	}
	return out, sc.Err()
}
