<?php
// The server phpMyAdmin logs in to, from the upstream image's variables. Cookie login:
// every user types their own MySQL account; nothing is stored here.
$cfg['Servers'][1]['auth_type'] = 'cookie';
$cfg['Servers'][1]['host'] = getenv('PMA_HOST') ?: 'localhost';
$cfg['Servers'][1]['port'] = getenv('PMA_PORT') ?: '3306';
$cfg['Servers'][1]['AllowNoPassword'] = false;
// As the upstream image does: the deployment's own settings last (stack.yml mounts them).
if (file_exists('/etc/phpmyadmin/config.user.inc.php')) {
    include '/etc/phpmyadmin/config.user.inc.php';
}
