package rollout_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/applier"
	"github.com/ccm-dev/ccm/internal/render"
	"github.com/ccm-dev/ccm/internal/rollout"
)

// One reading of a run's outcome, for the agent's loop, ccm.converge and
// ccm apply --once.
func TestNextIsTheOneReadingOfARunsOutcome(t *testing.T) {
	for name, tc := range map[string]struct {
		res  rollout.Result
		want rollout.Next
	}{
		"converged":        {rollout.Result{Ran: true, Status: api.Status{Result: api.ResultConverged}, Report: &applier.Report{}}, rollout.Done},
		"failed, flagged":  {rollout.Result{Ran: true, Status: api.Status{Result: api.ResultFailed}, Report: &applier.Report{}, Err: errors.New("validate")}, rollout.Done},
		"halted by a flag": {rollout.Result{Failure: &api.Failure{Node: "web2"}}, rollout.Requeue},
		"paused":           {rollout.Result{Paused: &api.Pause{By: "alice"}}, rollout.Requeue},
		"no lock":          {rollout.Result{Err: errors.New("etcd did not answer")}, rollout.Retry},
		"not recorded":     {rollout.Result{Ran: true, Report: &applier.Report{}, Err: fmt.Errorf("%w: status", rollout.ErrNotRecorded)}, rollout.RetryAll},
		"aborted":          {rollout.Result{Ran: true, Report: &applier.Report{Aborted: true}, LockLost: true}, rollout.RequeueAll},
		"stuck template":   {rollout.Result{Ran: true, Report: &applier.Report{}, Err: fmt.Errorf("render: %w", render.ErrStuck)}, rollout.Exit},
	} {
		assert.Equal(t, tc.want, tc.res.Next(), name)
	}
}

// What each outcome leaves to do, the same for every caller of a run.
func TestSettleSaysWhatRunsNext(t *testing.T) {
	for name, tc := range map[string]struct {
		res  rollout.Result
		want rollout.Settlement
	}{
		"converged":       {rollout.Result{Ran: true, Status: api.Status{Result: api.ResultConverged}, Report: &applier.Report{}}, rollout.Settlement{}},
		"failed, flagged": {rollout.Result{Ran: true, Status: api.Status{Result: api.ResultFailed}, Report: &applier.Report{}, Err: errors.New("validate")}, rollout.Settlement{}},
		"halted":          {rollout.Result{Failure: &api.Failure{Node: "web2"}}, rollout.Settlement{Again: rollout.Same, Gate: true}},
		"no lock":         {rollout.Result{Err: errors.New("etcd did not answer")}, rollout.Settlement{Again: rollout.Same, Backoff: true}},
		"not recorded":    {rollout.Result{Ran: true, Report: &applier.Report{}, Err: fmt.Errorf("%w: status", rollout.ErrNotRecorded)}, rollout.Settlement{Again: rollout.Everything, Backoff: true}},
		"lock lost":       {rollout.Result{Ran: true, Report: &applier.Report{Aborted: true}, LockLost: true}, rollout.Settlement{Again: rollout.Everything, NewSession: true}},
		"stopped":         {rollout.Result{Ran: true, Report: &applier.Report{Aborted: true}}, rollout.Settlement{Again: rollout.Everything}},
		"stuck template":  {rollout.Result{Ran: true, Report: &applier.Report{}, Err: fmt.Errorf("render: %w", render.ErrStuck)}, rollout.Settlement{Exit: true}},
	} {
		assert.Equal(t, tc.want, rollout.Settle(tc.res), name)
	}
}
