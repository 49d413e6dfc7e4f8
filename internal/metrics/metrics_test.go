package metrics_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/metrics"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, err := io.ReadAll(rec.Result().Body)
	require.NoError(t, err)
	return rec.Code, string(body)
}

func TestHandlerServesMetricsAndHealth(t *testing.T) {
	m := metrics.New()
	m.Runs.WithLabelValues("converged").Add(3)
	m.Halted.Set(1)
	var notReady error = errors.New("object watch not synced with etcd")
	var unhealthy error
	h := m.Handler(func() error { return unhealthy }, func() error { return notReady })

	code, body := get(t, h, "/metrics")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `ccm_runs_total{result="converged"} 3`)
	assert.Contains(t, body, "ccm_halted 1")
	assert.Contains(t, body, "process_resident_memory_bytes")

	code, _ = get(t, h, "/healthz")
	assert.Equal(t, http.StatusOK, code)
	code, body = get(t, h, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "object watch not synced")

	notReady = nil
	code, _ = get(t, h, "/readyz")
	assert.Equal(t, http.StatusOK, code)

	unhealthy = errors.New("the run has made no progress for 2m0s")
	code, body = get(t, h, "/healthz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "unhealthy: the run has made no progress")
}
