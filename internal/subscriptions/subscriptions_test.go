package subscriptions_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/ccm-dev/ccm/internal/subscriptions"
)

func TestSubscribersAreTheConfigurationsReadingAChangedType(t *testing.T) {
	x := subscriptions.New(map[string][]string{
		"nginx-vhosts":  {"sites", "certificates"},
		"php-fpm-pools": {"sites"},
		"crontab":       {"users"},
		"static":        nil,
	})
	assert.Equal(t, []string{"nginx-vhosts", "php-fpm-pools"}, x.Subscribers("sites"))
	assert.Equal(t, []string{"crontab", "nginx-vhosts"}, x.Subscribers("certificates", "users"))
	assert.Empty(t, x.Subscribers("unknown"))
}

func ExampleIndex() {
	x := subscriptions.New(map[string][]string{"nginx-vhosts": {"sites"}, "crontab": {"users"}})
	fmt.Println(x.Subscribers("sites"))
	// Output: [nginx-vhosts]
}
