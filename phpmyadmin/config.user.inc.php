<?php
// phpMyAdmin settings of the IoT platform, added to the phpmyadmin image's own configuration
// (the image includes /etc/phpmyadmin/config.user.inc.php after it has set up the server
// from PMA_HOST). Mounted by stack.yml as a Swarm config.
//
// Admins log in with the MySQL account of the accounts database (auth_server). MySQL's root
// is never accepted here: root may do anything to every database and account, and the
// login form is reachable from the network (port 8081). The stack also creates root for
// localhost only (MYSQL_ROOT_HOST), so root works only inside the mysql container; this
// setting covers data volumes set up before that, where root@'%' may still exist.
foreach (array_keys($cfg['Servers']) as $server) {
    $cfg['Servers'][$server]['AllowRoot'] = false;
    // The image allows accounts without a password; none of ours has one, so none may log in.
    $cfg['Servers'][$server]['AllowNoPassword'] = false;
}
